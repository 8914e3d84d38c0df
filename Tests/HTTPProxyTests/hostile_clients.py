#!/usr/bin/env python3
"""Hostile and careless clients for the http plugin's tests (loopback only, bounded in time).

  slowloris PORT N INTERVAL SECONDS   N connections trickle a never-ending request head, one
                                      byte per INTERVAL; prints "closed=C open=O last=T" after
                                      SECONDS (T: seconds until the last server close).
  flood PORT N HOLD                   opens N idle connections, holds them HOLD seconds, closes
                                      them; prints "opened=K".
"""
import resource
import socket
import sys
import time


def raise_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def slowloris(port, count, interval, seconds):
    raise_limit()
    start = time.monotonic()
    conns = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        s.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        conns.append(s)
    closed_at = {}
    while time.monotonic() - start < seconds:
        for i, s in enumerate(conns):
            if i in closed_at:
                continue
            try:
                data = s.recv(4096)
                if data == b"":
                    closed_at[i] = time.monotonic() - start
                    continue
            except BlockingIOError:
                pass
            except OSError:
                closed_at[i] = time.monotonic() - start
                continue
            try:
                s.send(b"a")
            except OSError:
                closed_at[i] = time.monotonic() - start
        time.sleep(interval)
    last = max(closed_at.values()) if closed_at else -1
    print(f"closed={len(closed_at)} open={count - len(closed_at)} last={last:.1f}")
    for s in conns:
        s.close()


def flood(port, count, hold):
    raise_limit()
    conns = []
    for _ in range(count):
        try:
            conns.append(socket.create_connection(("127.0.0.1", port)))
        except OSError:
            break
    time.sleep(hold)
    for s in conns:
        s.close()
    print(f"opened={len(conns)}")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "slowloris":
        slowloris(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
    elif mode == "flood":
        flood(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(f"unknown mode {mode}")
