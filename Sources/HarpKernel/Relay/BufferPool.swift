/// Buffers of one size kept per loop for reuse: only a connection that is copying or writing
/// right now holds one, so idle connections cost none, and at most `maxFree` stay cached
/// after a burst (the rest go back to the allocator).
///
/// Loop-confined, like everything a loop owns.
public final class BufferPool {
    /// Plaintext moved per copy round (`EventLoop.copyBuffers`). Large, because every copy
    /// round is a ring read, a ring send and (for TLS) a BIO pass: 256 KiB rounds measured
    /// ~8% less CPU per GB than 64 KiB ones.
    public static let copyChunk = 256 * 1024
    /// A copy chunk plus the framing TLS adds when it is encrypted (up to ~85 bytes per 16 KiB
    /// record with TLS 1.2 CBC suites, 22 with 1.3), so one round's ciphertext is one send.
    static let copySize = copyChunk + 4096
    /// `EventLoop.smallBuffers`: a response head with a small body, a WebSocket control
    /// frame — the writes that are most of a proxy's, without tying up a copy buffer.
    public static let smallSize = 16 * 1024

    /// The `copyChunk` bytes of a copy buffer one copy round reads into, after `headroom`
    /// bytes left for the destination's framing (`ByteStream.writeHeadroom`).
    public static func copyRound(in scratch: UnsafeMutableRawBufferPointer, headroom: Int) -> UnsafeMutableRawBufferPointer {
        precondition(headroom >= 0 && headroom + copyChunk <= scratch.count, "headroom beyond the copy buffer's spare room")
        return UnsafeMutableRawBufferPointer(rebasing: scratch[headroom..<headroom + copyChunk])
    }

    public let size: Int
    private var free: [UnsafeMutableRawBufferPointer] = []
    private let maxFree: Int

    init(size: Int, maxFree: Int) {
        self.size = size
        self.maxFree = maxFree
    }

    /// A buffer of `size` bytes; hand it back with `give`.
    public func take() -> UnsafeMutableRawBufferPointer {
        free.popLast() ?? .allocate(byteCount: size, alignment: 16)
    }

    public func give(_ buffer: UnsafeMutableRawBufferPointer) {
        assert(buffer.count == size, "a buffer goes back to the pool it came from")
        if free.count < maxFree { free.append(buffer) } else { buffer.deallocate() }
    }

    /// For owners whose buffer starts at the pool's size and may grow past it (a read buffer):
    /// one of the pool's size goes back to it, any other to the allocator.
    public func recycle(_ buffer: UnsafeMutableRawBufferPointer) {
        if buffer.count == size { give(buffer) } else { buffer.deallocate() }
    }
}
