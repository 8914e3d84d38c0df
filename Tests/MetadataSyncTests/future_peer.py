"""A listed peer whose clock runs far ahead: after the p2p Hello it sends one metadata
operation (frame 65, see OperationCodec.swift) creating the directory NAME under the root,
stamped WALL_MS.

usage: future_peer.py PORT CERT KEY NODE_ID_HEX WALL_MS NAME SEQUENCE
"""
import os, socket, ssl, struct, sys, time

port, cert, key, node_hex, wall, name, sequence = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6], int(sys.argv[7])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.minimum_version = ssl.TLSVersion.TLSv1_3
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
context.load_cert_chain(cert, key)
context.set_alpn_protocols(["harp-p2p/1"])
tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="harp-p2p")

def frame(kind, body):
    return struct.pack(">BI", kind, len(body)) + body

tls.sendall(frame(1, b"harp-p2p" + struct.pack(">HI", 1, 0)))
encoded_name = name.encode()
operation = (struct.pack(">BQQI", 1, sequence, wall, 0) + bytes.fromhex(node_hex) + os.urandom(8) + os.urandom(8)
             + bytes(16) + b"\x01" + struct.pack(">H", len(encoded_name)) + encoded_name)
tls.sendall(frame(65, b"\x00" + operation))
time.sleep(2)
tls.close()
print("sent")
