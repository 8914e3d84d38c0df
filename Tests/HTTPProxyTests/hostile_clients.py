#!/usr/bin/env python3
"""Hostile and careless clients for the http plugin's tests (loopback only, bounded in time).

  slowloris PORT N INTERVAL SECONDS   N connections trickle a never-ending request head, one
                                      byte per INTERVAL; prints "closed=C open=O last=T" after
                                      SECONDS (T: seconds until the last server close).
  flood PORT N HOLD                   opens N idle connections, holds them HOLD seconds, closes
                                      them; prints "opened=K".
  steady PORT N SECONDS PATH          N keep-alive clients send GET PATH back to back for SECONDS;
                                      prints "requests=R".
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


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


def get(sock, path):
    """One keep-alive GET; reads the whole response (Content-Length or chunked)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    if b"transfer-encoding: chunked" in head.lower():
        while not body.endswith(b"\r\n\r\n") or b"\r\n0\r\n" not in body[-64:]:
            more = sock.recv(1 << 20)
            if not more:
                raise SystemExit("closed mid-body")
            body += more
    else:
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += sock.recv(1 << 20)


def keepalive(port, pid, count, path):
    """KiB of harp's RSS per kept-alive connection idle after one response from `path`."""
    raise_limit()
    warm = socket.create_connection(("127.0.0.1", port))
    get(warm, path)
    time.sleep(0.3)
    before = rss_kib(pid)
    conns = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        get(sock, path)
        conns.append(sock)
    time.sleep(0.5)
    held = rss_kib(pid)
    for sock in conns + [warm]:
        sock.close()
    print(f"{(held - before) / count:.1f}")


def steady(port, count, seconds, path):
    """Steady load: `count` kept-alive clients, each sending its next request once the last
    response is in."""
    import threading
    raise_limit()
    done = [0] * count
    stop = time.monotonic() + seconds

    def client(index):
        sock = socket.create_connection(("127.0.0.1", port))
        while time.monotonic() < stop:
            get(sock, path)
            done[index] += 1
        sock.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"requests={sum(done)}")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "slowloris":
        slowloris(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
    elif mode == "flood":
        flood(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    elif mode == "steady":
        steady(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    elif mode == "keepalive":
        keepalive(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(f"unknown mode {mode}")
