import Glibc

/// How `FramedReader.next` ended.
public enum FramedRead<Frame, Failure> {
    case frame(Frame, headerLength: Int, payloadLength: Int)
    case invalid(Failure)
    /// The buffer is full and the decoder still needs more (a head over the size limit).
    case full
    /// The stream ended first: 0 at end of stream, or `-errno` (`-ETIMEDOUT`).
    case ended(Int)
}

/// A read buffer over a stream, filled on demand for a `FrameDecoder`: the one loop that
/// HTTP heads, WebSocket frames, frp messages and yamux headers are read with.
///
/// A value (two references): making one per exchange costs no allocation. Loop-confined.
public struct FramedReader {
    public let stream: any ByteStream
    public let buffer: ReadBuffer
    /// While the buffer holds no memory, wait for the stream to be readable before taking
    /// any (one more ring operation per wait; an idle connection then costs no buffer).
    public let allocatesWhenReadable: Bool
    /// For a stream of frames whose payloads pass through the buffer (yamux data, WebSocket
    /// frames streamed through): a read that takes all the room grows the buffer (×4, up to
    /// its capacity), since more is probably waiting. Growth otherwise happens only while one
    /// frame needs the room, and such a reader, consuming each frame as it arrives, would read
    /// 4 KiB at a time forever. Between bursts (empty, and nothing waiting on the stream:
    /// one non-blocking peek) it goes back to its first size, so an idle connection does not
    /// keep its peak. Not for readers whose owner reads large payloads straight from the
    /// stream (P2P chunks): a larger buffer would only pull those through a copy.
    public let growsWhenFull: Bool

    public init(stream: any ByteStream, capacity: Int, allocatesWhenReadable: Bool = false, growsWhenFull: Bool = false) {
        self.stream = stream
        buffer = ReadBuffer(capacity: capacity)
        self.allocatesWhenReadable = allocatesWhenReadable
        self.growsWhenFull = growsWhenFull
    }

    /// A reader over `stream` that uses (and leaves behind its unread bytes in) `buffer`.
    public init(stream: any ByteStream, buffer: ReadBuffer, growsWhenFull: Bool = false) {
        self.stream = stream
        self.buffer = buffer
        allocatesWhenReadable = false
        self.growsWhenFull = growsWhenFull
    }

    /// Reads what has arrived after the buffered bytes: a count, 0 at end of stream, `-errno`,
    /// or `-ENOBUFS` when the buffer is full.
    public func fill(timeout: Duration?, expectingWait: Bool = false) async -> Int {
        if allocatesWhenReadable && !buffer.isAllocated {
            let ready = await stream.waitReadable(timeout: timeout)
            if ready < 0 { return Int(ready) }
        }
        if growsWhenFull && buffer.isEmpty && buffer.isGrown && stream.isQuietWhileIdle() { buffer.shrinkIfIdle() }
        let space = buffer.writable
        guard !space.isEmpty else { return -Int(ENOBUFS) }
        let received = await stream.read(into: space, timeout: timeout, expectingWait: expectingWait && buffer.isAllocated)
        if received > 0 {
            buffer.didWrite(received)
            if growsWhenFull { buffer.growIfFilled(received, room: space.count) }
        }
        return received
    }

    /// Decodes the next frame, reading until the decoder decides. Each read may wait up to
    /// `timeout`; with `frameTimeout`, the whole header must arrive within that much time of
    /// its first byte (so a peer trickling one byte at a time cannot hold the connection:
    /// `.ended(-ETIMEDOUT)`); with `until` (the loop clock, ns), everything must arrive by
    /// then, first byte included. `expectingWait` applies to the first read, when nothing is
    /// buffered (see `EventLoop.recv`).
    public func next<D: FrameDecoder>(_ decoder: inout D, timeout: Duration?, frameTimeout: Duration? = nil, until: UInt64? = nil,
                                      expectingWait: Bool = false) async -> FramedRead<D.Frame, D.Failure> {
        var waitExpected = expectingWait
        var deadline: UInt64 = until ?? 0
        var frameClockStarted = false
        while true {
            if !frameClockStarted, !buffer.isEmpty, let frameTimeout {
                frameClockStarted = true
                let frameDeadline = stream.loop.now &+ frameTimeout.nanoseconds
                deadline = deadline == 0 ? frameDeadline : min(deadline, frameDeadline)
            }
            if !buffer.isEmpty {
                switch decoder.decode(buffer.readable) {
                case .frame(let frame, let headerLength, let payloadLength):
                    return .frame(frame, headerLength: headerLength, payloadLength: payloadLength)
                case .invalid(let failure):
                    return .invalid(failure)
                case .needMore:
                    break
                }
            }
            var wait = timeout
            if deadline != 0 {
                let now = stream.loop.now
                guard now < deadline else { return .ended(-Int(ETIMEDOUT)) }
                let left = Duration.nanoseconds(Int64(deadline - now))
                wait = timeout.map { min($0, left) } ?? left
            }
            let received = await fill(timeout: wait, expectingWait: waitExpected && buffer.isEmpty)
            waitExpected = false
            if received == -Int(ENOBUFS) { return .full }
            if received <= 0 { return .ended(received) }
        }
    }

    /// `next`, then reads until the frame's payload is buffered too: the frame's header and
    /// payload are `buffer.readable[0..<headerLength + payloadLength]` (the caller consumes
    /// them). With `until` (the loop clock, ns) the whole frame must be in by then — a peer
    /// that sends a byte now and then cannot hold a first message or a Hello past its deadline.
    public func nextWhole<D: FrameDecoder>(_ decoder: inout D, timeout: Duration?, until: UInt64? = nil) async -> FramedRead<D.Frame, D.Failure> {
        let read = await next(&decoder, timeout: timeout, until: until)
        guard case .frame(_, let headerLength, let payloadLength) = read else { return read }
        let held = await hold(headerLength + payloadLength, timeout: timeout, until: until)
        if held == -Int(ENOBUFS) { return .full }
        return held > 0 ? read : .ended(held)
    }

    /// Reads until the buffer holds `count` bytes (a frame whose header `next` decoded, and
    /// its payload): 1, or what ended the stream first — 0, `-errno`, `-ETIMEDOUT` past
    /// `until` (the loop clock, ns), `-ENOBUFS` when `count` exceeds the buffer's capacity.
    public func hold(_ count: Int, timeout: Duration?, until: UInt64? = nil) async -> Int {
        while buffer.count < count {
            var wait = timeout
            if let until {
                let now = stream.loop.now
                guard now < until else { return -Int(ETIMEDOUT) }
                let left = Duration.nanoseconds(Int64(until - now))
                wait = timeout.map { min($0, left) } ?? left
            }
            let received = await fill(timeout: wait)
            if received <= 0 { return received }
        }
        return 1
    }

    /// Hands the next `count` bytes of the stream to `body` as they arrive, buffered ones
    /// first, and consumes them: a payload streamed through the buffer rather than held whole
    /// (yamux data, a frame being skipped). 1 when all `count` passed, else what ended the
    /// stream first (0 or `-errno`).
    public func pass(_ count: Int, timeout: Duration?, to body: (UnsafeRawBufferPointer) -> Void) async -> Int {
        var remaining = count
        while remaining > 0 {
            if buffer.isEmpty {
                let received = await fill(timeout: timeout)
                if received <= 0 { return received }
            }
            let take = min(remaining, buffer.count)
            body(UnsafeRawBufferPointer(rebasing: buffer.readable[0..<take]))
            buffer.consume(take)
            remaining -= take
        }
        return 1
    }
}
