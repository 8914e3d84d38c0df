import CShims
import Glibc

/// A connection's plaintext, whatever carries it: a socket as is (`SocketStream`), or the
/// plaintext side of a TLS session (`TLSStream`). Relays and body transfers take two streams
/// and splice when both are plain sockets, copying otherwise — so a plugin does not care which
/// kind it holds. Loop-confined, like the socket under it.
public protocol ByteStream: AnyObject, Sendable {
    var loop: EventLoop { get }
    /// The socket underneath (for splice when `isPlain`, and for closing).
    var fd: Int32 { get }
    /// True when the bytes on the socket are the plaintext itself.
    var isPlain: Bool { get }
    /// Bytes read (> 0), 0 at end of stream, or `-errno` (`-ETIMEDOUT` after `timeout`).
    /// `expectingWait`: nothing is expected to have arrived yet (see `EventLoop.recv`).
    func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration?, expectingWait: Bool) async -> Int
    /// Writes all of `bytes`: 0, or `-errno`.
    func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration?) async -> Int32
    /// Ends this direction (FIN for a socket, close_notify for TLS); reading goes on.
    func finishWriting() async
}

extension ByteStream {
    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration?) async -> Int {
        await read(into: buffer, timeout: timeout, expectingWait: false)
    }
}

/// A plain socket as a `ByteStream`, with its own completion records for each direction.
public final class SocketStream: ByteStream, @unchecked Sendable {
    // @unchecked Sendable: used only on `loop`, which owns the socket.
    public let loop: EventLoop
    public let fd: Int32
    private let readIO = AsyncCompletion()
    private let writeIO = AsyncCompletion()

    public init(loop: EventLoop, fd: Int32) {
        self.loop = loop
        self.fd = fd
    }

    public var isPlain: Bool { true }

    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration?, expectingWait: Bool) async -> Int {
        Int(await loop.recv(fd, into: buffer, timeout: timeout, expectingWait: expectingWait, using: readIO))
    }

    public func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration?) async -> Int32 {
        await loop.sendAll(fd, bytes, timeout: timeout, using: writeIO)
    }

    public func finishWriting() async {
        shutdown(fd, Int32(SHUT_WR))
    }
}

extension EventLoop {
    /// `relay(_:_:)` for streams: spliced when both are plain sockets, copied otherwise
    /// (one task per direction, on this loop).
    public func relay(_ first: any ByteStream, _ second: any ByteStream, idleTimeout: Duration,
                      halfClosedTimeout: Duration? = nil) async -> RelayResult {
        if first.isPlain && second.isPlain {
            return await relay(first.fd, second.fd, idleTimeout: idleTimeout, halfClosedTimeout: halfClosedTimeout)
        }
        return await CopyRelay(loop: self, first, second, idleTimeout: idleTimeout, halfClosedTimeout: halfClosedTimeout).run()
    }

    /// `transfer(from:to:count:)` for streams: spliced when both are plain sockets, copied
    /// otherwise. `count` may be `Int.max` for "until end of stream" (`.endedEarly` then).
    public func transfer(from source: any ByteStream, to destination: any ByteStream, count: Int,
                         idleTimeout: Duration) async -> RelayResult {
        if source.isPlain && destination.isPlain {
            return await transfer(from: source.fd, to: destination.fd, count: count, idleTimeout: idleTimeout)
        }
        let scratch = copyBuffers.take()
        defer { copyBuffers.give(scratch) }
        let buffer = UnsafeMutableRawBufferPointer(rebasing: scratch[..<CopyBuffers.chunk])
        var moved = 0
        while moved < count {
            let want = min(buffer.count, count - moved)
            let got = await source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), timeout: idleTimeout)
            if got == 0 { return RelayResult(outcome: .endedEarly(side: 0), forwardBytes: moved, backwardBytes: 0) }
            if got < 0 {
                let outcome: RelayResult.Outcome = got == -Int(ETIMEDOUT) ? .idleTimeout : .failed(side: 0, errno: Int32(-got))
                return RelayResult(outcome: outcome, forwardBytes: moved, backwardBytes: 0)
            }
            let sent = await destination.write(UnsafeRawBufferPointer(rebasing: buffer[0..<got]), timeout: idleTimeout)
            if sent != 0 { return RelayResult(outcome: .failed(side: 1, errno: -sent), forwardBytes: moved, backwardBytes: 0) }
            moved += got
        }
        return RelayResult(outcome: .finished, forwardBytes: moved, backwardBytes: 0)
    }
}

/// Both directions between two streams by copying, for when one of them is TLS. Each
/// direction is a task on the loop; end of stream is passed on with `finishWriting`, and
/// any error ends both (their sockets are shut down so the other task's read returns).
final class CopyRelay: @unchecked Sendable {
    // @unchecked Sendable: both direction tasks run on `loop`; state is touched only there.
    let loop: EventLoop
    let streams: [any ByteStream]
    let idleLimit: UInt64
    let halfClosedLimit: UInt64
    private var lastActivity: UInt64
    private var finished = [false, false]
    private var bytes = [0, 0]
    private var outcome: RelayResult.Outcome?

    init(loop: EventLoop, _ first: any ByteStream, _ second: any ByteStream, idleTimeout: Duration, halfClosedTimeout: Duration?) {
        self.loop = loop
        streams = [first, second]
        idleLimit = idleTimeout.nanoseconds
        halfClosedLimit = min(halfClosedTimeout?.nanoseconds ?? idleLimit, idleLimit)
        lastActivity = loop.now
    }

    func run() async -> RelayResult {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.pump(0) }
            group.addTask { await self.pump(1) }
        }
        return RelayResult(outcome: outcome ?? .finished, forwardBytes: bytes[0], backwardBytes: bytes[1])
    }

    private func pump(_ side: Int) async {
        let source = streams[side], destination = streams[1 - side]
        let scratch = loop.copyBuffers.take()
        defer { loop.copyBuffers.give(scratch) }
        let buffer = UnsafeMutableRawBufferPointer(rebasing: scratch[..<CopyBuffers.chunk])
        while outcome == nil {
            let halfClosed = finished[0] || finished[1]
            let limit = halfClosed ? halfClosedLimit : idleLimit
            let got = await source.read(into: buffer, timeout: .nanoseconds(Int64(limit)))
            if got == 0 { break }
            if got == -Int(ETIMEDOUT) {
                if loop.now &- lastActivity >= limit { return end(.idleTimeout) }
                continue
            }
            if got < 0 { return end(.failed(side: side, errno: Int32(-got))) }
            lastActivity = loop.now
            let sent = await destination.write(UnsafeRawBufferPointer(rebasing: buffer[0..<got]), timeout: .nanoseconds(Int64(idleLimit)))
            if sent != 0 { return end(.failed(side: 1 - side, errno: -sent)) }
            bytes[side] += got
        }
        finished[side] = true
        await destination.finishWriting()
    }

    private func end(_ reason: RelayResult.Outcome) {
        guard outcome == nil else { return }
        outcome = reason
        for stream in streams { shutdown(stream.fd, Int32(SHUT_RDWR)) }
    }
}
