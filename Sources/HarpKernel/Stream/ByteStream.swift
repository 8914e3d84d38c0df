import CShims
import Glibc

/// A connection's plaintext, whatever carries it: a socket as is (`SocketStream`), the
/// plaintext side of a TLS session (`TLSStream`), and later a stream multiplexed over another
/// connection. Relays and body transfers take two streams and splice when both offer a
/// `spliceDescriptor`, copying otherwise — so a plugin does not care which kind it holds.
///
/// A stream owns what carries it: `close()` and `abort()` release it, and nobody else closes
/// its socket (for a multiplexed stream, "its socket" is the whole session's).
///
/// Loop-confined: every member is used only on `loop`'s thread.
public protocol ByteStream: AnyObject, Sendable {
    var loop: EventLoop { get }

    /// The socket to splice from and to, present only while the bytes on that socket are this
    /// stream's plaintext (a plain socket; never TLS or a multiplexed stream).
    var spliceDescriptor: Int32? { get }

    /// The remote end, for logs and access decisions (nil when it is not known).
    var peer: SocketAddress? { get }

    /// Bytes read (> 0), 0 at end of stream, or `-errno` (`-ETIMEDOUT` after `timeout`).
    /// `expectingWait`: nothing is expected to have arrived yet (see `EventLoop.recv`).
    func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration?, expectingWait: Bool) async -> Int

    /// Waits until a read would not wait (bytes or end of stream have arrived) without
    /// reading, so that no buffer is held meanwhile. > 0 when ready, `-errno` (`-ETIMEDOUT`).
    func waitReadable(timeout: Duration?) async -> Int32

    /// Writes all of `bytes`: 0, or `-errno`.
    ///
    /// Buffer lifetime: the memory must stay valid and unchanged until this returns — the ring
    /// reads it while the task is suspended. Memory a caller owns (an allocation, a pooled
    /// buffer) qualifies; an `Array`'s storage reached through `withUnsafeBytes` does not
    /// (the pointer is only valid inside that closure). Use `write(_: [UInt8], …)` for arrays.
    func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration?) async -> Int32

    /// Bytes in front of a write's data that the stream may overwrite with framing of its own
    /// (a yamux frame header), so a relay that reads after this much room lets the data go
    /// out without being copied behind a header. 0 for streams that add no framing.
    var writeHeadroom: Int { get }

    /// `write(_:timeout:)` for bytes preceded by `writeHeadroom` bytes of the same buffer,
    /// which the stream may overwrite (the caller no longer needs them).
    func write(afterHeadroom bytes: UnsafeRawBufferPointer, timeout: Duration?) async -> Int32

    /// Writes an array's bytes (0 or `-errno`), copying them into stable memory first where
    /// the stream needs that (see `write(_:timeout:)` on buffer lifetime).
    func write(_ bytes: [UInt8], timeout: Duration?) async -> Int32

    /// Ends this direction (FIN for a socket, close_notify for TLS); reading goes on.
    func finishWriting() async

    /// Ends the stream cleanly (TLS: close_notify first) and releases what carries it.
    /// Idempotent; the stream must not be used afterwards.
    func close() async

    /// Ends the stream at once, without a goodbye: an operation pending on it returns (end of
    /// stream or an error), later ones fail with `-EBADF`, and what carries it is released.
    /// Synchronous and idempotent — for a failed relay, a discarded pooled connection, a
    /// protocol violation.
    func abort()

    /// For an idle kept-alive stream about to be reused: false when the peer has closed it or
    /// sent bytes nobody asked for. Costs at most one non-blocking syscall. Also how a reader
    /// that grew its buffer for a burst tells that the burst is over (`FramedReader`).
    func isQuietWhileIdle() -> Bool
}

extension ByteStream {
    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration?) async -> Int {
        await read(into: buffer, timeout: timeout, expectingWait: false)
    }

    public func write(_ bytes: [UInt8], timeout: Duration?) async -> Int32 {
        await writeCopying(bytes, timeout: timeout)
    }

    /// The default array write: copy into a buffer borrowed from the loop (no allocation once
    /// the pools are warm), in as many rounds as the array needs.
    public func writeCopying(_ bytes: [UInt8], timeout: Duration?) async -> Int32 {
        let pool = bytes.count <= BufferPool.smallSize ? loop.smallBuffers : loop.copyBuffers
        let scratch = pool.take()
        defer { pool.give(scratch) }
        var offset = 0
        while offset < bytes.count {
            let count = min(scratch.count, bytes.count - offset)
            bytes.withUnsafeBytes { source in
                scratch.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[offset..<offset + count]))
            }
            let sent = await write(UnsafeRawBufferPointer(rebasing: scratch[0..<count]), timeout: timeout)
            if sent != 0 { return sent }
            offset += count
        }
        return 0
    }

    public func isQuietWhileIdle() -> Bool { true }

    public var writeHeadroom: Int { 0 }

    public func write(afterHeadroom bytes: UnsafeRawBufferPointer, timeout: Duration?) async -> Int32 {
        await write(bytes, timeout: timeout)
    }

    /// Streams that cannot wait without reading say "ready": the caller's read then waits.
    public func waitReadable(timeout: Duration?) async -> Int32 { 1 }
}

extension EventLoop {
    /// `relay(_:_:)` for streams: spliced when both offer a splice descriptor, copied
    /// otherwise (a `Pump`, one task per direction, on this loop).
    public func relay(_ first: any ByteStream, _ second: any ByteStream, idleTimeout: Duration,
                      halfClosedTimeout: Duration? = nil, meter: RelayMeter? = nil) async -> RelayResult {
        if let a = first.spliceDescriptor, let b = second.spliceDescriptor {
            return await relay(a, b, idleTimeout: idleTimeout, halfClosedTimeout: halfClosedTimeout, meter: meter)
        }
        let pump = Pump(loop: self, first, second, idleTimeout: idleTimeout, halfClosedTimeout: halfClosedTimeout, meter: meter)
        return await pump.run { side in await pump.copy(side) }
    }

    /// `transfer(from:to:count:)` for streams: spliced when both offer a splice descriptor,
    /// copied otherwise. `count` may be `Int.max` for "until end of stream" (`.endedEarly` then).
    public func transfer(from source: any ByteStream, to destination: any ByteStream, count: Int,
                         idleTimeout: Duration) async -> RelayResult {
        if let from = source.spliceDescriptor, let to = destination.spliceDescriptor {
            return await transfer(from: from, to: to, count: count, idleTimeout: idleTimeout)
        }
        let scratch = copyBuffers.take()
        defer { copyBuffers.give(scratch) }
        let buffer = BufferPool.copyRound(in: scratch, headroom: destination.writeHeadroom)
        var moved = 0
        while moved < count {
            let want = min(buffer.count, count - moved)
            let got = await source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), timeout: idleTimeout)
            if got == 0 { return RelayResult(outcome: .endedEarly(side: 0), forwardBytes: moved, backwardBytes: 0) }
            if got < 0 {
                let outcome: RelayResult.Outcome = got == -Int(ETIMEDOUT) ? .idleTimeout : .failed(side: 0, errno: Int32(-got))
                return RelayResult(outcome: outcome, forwardBytes: moved, backwardBytes: 0)
            }
            let sent = await destination.write(afterHeadroom: UnsafeRawBufferPointer(rebasing: buffer[0..<got]), timeout: idleTimeout)
            if sent != 0 { return RelayResult(outcome: .failed(side: 1, errno: -sent), forwardBytes: moved, backwardBytes: 0) }
            moved += got
        }
        return RelayResult(outcome: .finished, forwardBytes: moved, backwardBytes: 0)
    }
}
