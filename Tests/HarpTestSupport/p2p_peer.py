"""A p2p peer for tests: TLS 1.3 with a node's key (pinned, no chain check), ALPN harp-p2p/1,
and the Hello sent — what harp's PeerNetwork expects before any other frame."""
import socket, ssl, struct


def frame(kind, body):
    """One frame: type byte, body length (u32 BE), body."""
    return struct.pack(">BI", kind, len(body)) + body


def connect(port, cert, key):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["harp-p2p/1"])
    tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="harp-p2p")
    tls.sendall(frame(1, b"harp-p2p" + struct.pack(">HI", 1, 0)))
    return tls
