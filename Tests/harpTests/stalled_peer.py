"""Peers that stop reading (or stop answering) for harp's isolation tests. Each prints
"ready" once it holds its stall, then keeps it until killed.

  stalled_peer.py get PORT PATH [tls]           sends one GET, never reads the response
  stalled_peer.py read-nothing PORT [tls]       connects (TLS: handshakes), never reads
  stalled_peer.py send-forever PORT             connects and sends until killed
  stalled_peer.py upload PORT PATH BYTES [chunked]
                                                a POST whose body it keeps sending
  stalled_peer.py deaf-origin PORT              an HTTP server that reads a request head and
                                                then nothing more (never answers)
  stalled_peer.py deaf-server PORT              a TCP server that accepts and never reads
  stalled_peer.py ws-read-nothing URL           a WebSocket client that sends to an echo
                                                server and never reads the echoes
  stalled_peer.py trickle PORT                  sends the start of a TLS ClientHello one
                                                byte every 2 s; prints "closed after N s"
                                                when the server hangs up
  stalled_peer.py p2p-read-nothing PORT CERT KEY ROOT
                                                a listed P2P peer that asks for every chunk
                                                of ROOT and never reads them
"""
import asyncio
import os
import socket
import ssl
import sys
import threading
import time


def tiny(sock):
    # A small receive buffer: the stall reaches harp after a few KiB instead of MiBs.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


def connect(port, tls=False):
    sock = tiny(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.connect(("127.0.0.1", port))
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock, server_hostname="localhost")
    return sock


def ready():
    print("ready", flush=True)


def hold():
    while True:
        time.sleep(3600)


def send_forever(sock, chunk=b"u" * 65536):
    ready()
    while True:
        sock.sendall(chunk)


def serve(port, handle):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    ready()
    held = []
    while True:
        client, _ = listener.accept()
        tiny(client)
        held.append(client)
        threading.Thread(target=handle, args=(client,), daemon=True).start()


def read_head(client):
    data = b""
    while b"\r\n\r\n" not in data:
        more = client.recv(1)
        if not more:
            return
        data += more


async def ws_read_nothing(url):
    from websockets.asyncio.client import connect as ws_connect
    async with ws_connect(url, max_size=None, ping_interval=None, open_timeout=10) as ws:
        ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ws.transport.pause_reading()
        ready()
        message = b"w" * 65536
        while True:
            # The echo server's replies pile up in harp's direction towards us.
            await asyncio.wait_for(ws.send(message), timeout=3600)


def p2p_read_nothing(port, cert, key, root_hex):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "HarpTestSupport"))
    from p2p_peer import connect as p2p_connect, frame
    import struct
    import zlib
    tls = p2p_connect(port, cert, key)
    root = bytes.fromhex(root_hex)
    tls.sendall(frame(2, root))  # getManifest
    buffer = b""
    while True:
        while len(buffer) < 5:
            buffer += tls.recv(65536)
        kind, length = struct.unpack(">BI", buffer[:5])
        while len(buffer) < 5 + length:
            buffer += tls.recv(65536)
        body, buffer = buffer[5:5 + length], buffer[5 + length:]
        if kind == 3 and body[:32] == root:
            encoded = zlib.decompress(body[33:]) if body[32] & 1 else body[33:]
            break
    tag = b"harp-manifest-1\n"
    ids = [encoded[i:i + 32] for i in range(len(tag), len(encoded), 40)]
    tiny(tls)
    tls.sendall(b"".join(frame(8, chunk) for chunk in ids))  # request every chunk
    ready()
    hold()


def main():
    mode = sys.argv[1]
    if mode == "get":
        sock = connect(int(sys.argv[2]), tls=len(sys.argv) > 4 and sys.argv[4] == "tls")
        sock.sendall(f"GET {sys.argv[3]} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        ready()
        hold()
    elif mode == "read-nothing":
        sock = connect(int(sys.argv[2]), tls=len(sys.argv) > 3 and sys.argv[3] == "tls")
        ready()
        hold()
    elif mode == "send-forever":
        send_forever(connect(int(sys.argv[2])))
    elif mode == "upload":
        port, path, size = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
        chunked = len(sys.argv) > 5 and sys.argv[5] == "chunked"
        sock = connect(port)
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\n{framing}\r\n\r\n".encode())
        ready()
        piece = b"b" * 65536
        sent = 0
        while sent < size:
            part = piece[: min(len(piece), size - sent)]
            sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n" if chunked else part)
            sent += len(part)
        hold()
    elif mode == "deaf-origin":
        serve(int(sys.argv[2]), lambda client: (read_head(client), hold()))
    elif mode == "deaf-server":
        serve(int(sys.argv[2]), lambda client: hold())
    elif mode == "trickle":
        sock = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
        started = time.time()
        sock.settimeout(2)
        hello = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]) + bytes(64)
        for byte in hello:
            try:
                sock.send(bytes([byte]))
                if sock.recv(1) == b"":
                    break
            except socket.timeout:
                continue
            except OSError:
                break
        print("closed after %d s" % round(time.time() - started), flush=True)
    elif mode == "p2p-read-nothing":
        p2p_read_nothing(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
    elif mode == "ws-read-nothing":
        asyncio.run(ws_read_nothing(sys.argv[2]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
