"""An independent FastCDC implementation (harp's profile, docs/protocols/p2p.md) for known-answer
tests: the same bytes must give the same cut points in harp's Swift chunker.

  fastcdc_reference.py MIB      chunk MIB MiB of the test stream; print one length per line

The test stream: block i (i = 0, 1, ...) = SHA-256(b"harp-fastcdc-test" + i as 8 bytes big-endian),
concatenated.
"""
import hashlib
import sys

MIN, AVG, MAX = 256 << 10, 1 << 20, 4 << 20
MASK64 = (1 << 64) - 1
STRICT = (MASK64 << 42) & MASK64
LOOSE = (MASK64 << 46) & MASK64
GEAR = [int.from_bytes(hashlib.sha256(bytes([b])).digest()[:8], "big") for b in range(256)]


def stream(size):
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(b"harp-fastcdc-test" + i.to_bytes(8, "big")).digest()
        i += 1
    return bytes(out[:size])


def cut(data, start):
    n = len(data) - start
    if n <= MIN:
        return n
    end = min(n, MAX)
    normal = min(end, AVG)
    h = 0
    i = MIN
    while i < normal:
        h = ((h << 1) + GEAR[data[start + i]]) & MASK64
        if h & STRICT == 0:
            return i + 1
        i += 1
    while i < end:
        h = ((h << 1) + GEAR[data[start + i]]) & MASK64
        if h & LOOSE == 0:
            return i + 1
        i += 1
    return end


def main():
    data = stream(int(sys.argv[1]) << 20)
    start = 0
    while start < len(data):
        length = cut(data, start)
        print(length)
        start += length


if __name__ == "__main__":
    main()
