"""A listed peer that writes metadata operations itself (frame 65, see OperationCodec.swift)
after the p2p Hello.

usage: future_peer.py PORT CERT KEY NODE_ID_HEX WALL_MS NAME SEQUENCE
         one operation creating the directory NAME under the root, stamped WALL_MS
       future_peer.py PORT CERT KEY NODE_ID_HEX WALL_MS burst:N
         N operations: N/2 directories created (d0, d1, …), then each renamed (e0, e1, …)
"""
import os, socket, ssl, struct, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "HarpTestSupport"))
from p2p_peer import connect, frame  # noqa: E402

port, cert, key, node_hex, wall, name = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
tls = connect(port, cert, key)


def move(sequence, wall, counter, item, name):
    encoded = name.encode()
    return (struct.pack(">BQQI", 1, sequence, wall, counter) + bytes.fromhex(node_hex) + item
            + bytes(16) + b"\x01" + struct.pack(">H", len(encoded)) + encoded)

if name.startswith("burst:"):
    count = int(name.split(":")[1])
    items = [os.urandom(16) for _ in range(count // 2)]
    operations = [move(i + 1, wall, i, items[i], "d%d" % i) for i in range(count // 2)]
    operations += [move(count // 2 + i + 1, wall, count // 2 + i, items[i], "e%d" % i) for i in range(count // 2)]
    for start in range(0, len(operations), 2000):
        tls.sendall(frame(65, b"\x00" + b"".join(operations[start:start + 2000])))
else:
    tls.sendall(frame(65, b"\x00" + move(int(sys.argv[7]), wall, 0, os.urandom(16), name)))
time.sleep(2)
tls.close()
print("sent")
