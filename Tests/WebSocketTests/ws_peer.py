"""WebSocket peers for harp's tests and bench (Python `websockets`, a real implementation).

  ws_peer.py server PORT                       echo server; prints "ready" when listening
  ws_peer.py echo URL COUNT [deflate]          COUNT small text messages, each echoed back
                                               (deflate: negotiate permessage-deflate)
  ws_peer.py big URL BYTES                     one binary message of BYTES, echoed back
  ws_peer.py concurrent URL CONNS MESSAGES     CONNS connections at once, MESSAGES each
  ws_peer.py idle URL SECONDS                  connect, stay silent SECONDS, then echo once
  ws_peer.py rate URL SECONDS SIZE             messages/s and MB/s, one connection, pipelined
Prints "ok ..." on success; any failure raises (non-zero exit).
"""
import asyncio
import websockets.exceptions
import os
import sys
import time

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


async def echo_handler(ws):
    async for message in ws:
        await ws.send(message)


async def server(port):
    # The server accepts permessage-deflate when a client offers it.
    async with serve(echo_handler, "127.0.0.1", port, max_size=None, ping_interval=None):
        print("ready", flush=True)
        await asyncio.Future()


def client(url, deflate=False, **kw):
    return connect(url, max_size=None, ping_interval=None, compression="deflate" if deflate else None,
                   open_timeout=10, **kw)


async def echo(url, count, deflate=False):
    async with client(url, deflate) as ws:
        if deflate:
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert "permessage-deflate" in extensions, f"not negotiated: {extensions!r}"
        for i in range(count):
            text = f"message {i} ü " + "compressible " * (i % 50)
            await ws.send(text)
            assert await ws.recv() == text, f"echo {i} differs"
    print(f"ok {count}")


async def big(url, size):
    payload = os.urandom(size)
    async with client(url) as ws:
        await ws.send(payload)
        got = await ws.recv()
        assert got == payload, f"got {len(got)} bytes back"
    print(f"ok {size}")


async def concurrent(url, conns, messages):
    async def one(n):
        async with client(url) as ws:
            for i in range(messages):
                text = f"{n}:{i}"
                await ws.send(text)
                assert await ws.recv() == text
    await asyncio.gather(*(one(n) for n in range(conns)))
    print(f"ok {conns}")


async def idle(url, seconds):
    try:
        async with client(url) as ws:
            await asyncio.sleep(seconds)
            await ws.send("still here")
            assert await ws.recv() == "still here"
    except websockets.exceptions.ConnectionClosed as closed:
        # Closed under us: the close code we saw (1006: the connection ended without a close frame).
        print(f"closed {closed.rcvd.code if closed.rcvd else 1006}")
        return
    print("ok idle")


async def rate(url, seconds, size):
    payload = os.urandom(size)
    async with client(url) as ws:
        sent = received = 0
        deadline = time.monotonic() + seconds
        start = time.monotonic()

        async def reader():
            nonlocal received
            while True:
                await ws.recv()
                received += 1

        task = asyncio.create_task(reader())
        while time.monotonic() < deadline:
            for _ in range(64):
                await ws.send(payload)
                sent += 1
            while sent - received > 256:
                await asyncio.sleep(0)
        while received < sent:
            await asyncio.sleep(0.001)
        elapsed = time.monotonic() - start
        task.cancel()
    print(f"ok {received / elapsed:.0f} {received * size / elapsed / 1e6:.1f}")


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "server":
        asyncio.run(server(int(args[0])))
    elif command == "echo":
        asyncio.run(echo(args[0], int(args[1]), len(args) > 2 and args[2] == "deflate"))
    elif command == "big":
        asyncio.run(big(args[0], int(args[1])))
    elif command == "concurrent":
        asyncio.run(concurrent(args[0], int(args[1]), int(args[2])))
    elif command == "idle":
        asyncio.run(idle(args[0], float(args[1])))
    elif command == "rate":
        asyncio.run(rate(args[0], float(args[1]), int(args[2])))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
