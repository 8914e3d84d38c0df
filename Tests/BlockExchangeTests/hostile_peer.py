"""A listed peer that misbehaves after its Hello (harp's p2p frames: type u8, length u32 BE).

usage: hostile_peer.py PORT CERT KEY MODE — prints what it saw ("closed" when harp hung up).
"""
import os, socket, ssl, struct, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "HarpTestSupport"))
from p2p_peer import connect, frame  # noqa: E402

port, cert, key, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
tls = connect(port, cert, key)
root = bytes(range(32))
if mode == "unknown-type":
    tls.sendall(frame(99, b"x"))
elif mode == "oversize":
    tls.sendall(struct.pack(">BI", 9, 0x7FFFFFFF) + root)
elif mode == "bad-manifest":
    tls.sendall(frame(3, root + b"\x00" + b"harp-manifest-1\n" + bytes(40)))
elif mode == "bad-deflate":
    tls.sendall(frame(3, root + b"\x01" + b"not zlib at all"))
elif mode == "short-request":
    tls.sendall(frame(8, b"short"))
elif mode == "request-flood":
    tls.sendall(b"".join(frame(8, struct.pack(">Q", i) * 4) for i in range(2000)))
elif mode == "truncated-chunk":
    tls.sendall(struct.pack(">BI", 9, 32 + 1000000) + root + bytes(100))
    time.sleep(0.2)
    tls.close()
    print("closed")
    sys.exit(0)
tls.settimeout(10)
try:
    while tls.recv(65536):
        pass
    print("closed")
except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
    print("closed")
except socket.timeout:
    print("still open")
