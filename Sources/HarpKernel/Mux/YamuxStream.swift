import Glibc

/// One stream of a `YamuxSession`, as a `ByteStream`: reads take what the session delivered
/// (waiting while there is none), writes go out as data frames within the send window the
/// peer granted (waiting for window updates). It has no socket of its own, so no splice
/// descriptor: relays copy (`Pump`). `close()` sends FIN, `abort()` RST; neither touches the
/// session's connection.
///
/// Loop-confined, like its session.
public final class YamuxStream: ByteStream, @unchecked Sendable {
    // @unchecked Sendable: every member is touched only on the session's loop.
    public let id: UInt32
    /// Strong: a stream can outlive the task that ran its session (a relay still holding a
    /// work stream when the session ends); the session lets go of its streams when it ends or
    /// forgets one, so the cycle does not outlast them.
    let session: YamuxSession
    /// Bytes the session delivered that no read has taken yet.
    private let inbound: ReadBuffer
    /// How much more the peer may send before we grant more.
    private(set) var receiveWindow = YamuxSession.initialWindow
    /// Payload of the frame being received that has not been delivered yet: the session
    /// delivers a large frame in parts, and a read between two parts must not grant that
    /// room again (the peer could then send past `inbound`'s capacity).
    private var undelivered: UInt32 = 0
    /// How much more we may send before the peer grants more.
    private var sendWindow = YamuxSession.initialWindow
    private var sentFIN = false
    private var receivedFIN = false
    private var isReset = false
    private let readWait: LoopWait
    /// The buffer of a read waiting for bytes, and how much of it the session has filled:
    /// a frame's payload goes straight there instead of through `inbound` (one copy less per
    /// byte; a relay's read is nearly always waiting).
    private var waitingRead: UnsafeMutableRawBufferPointer?
    private var waitingFilled = 0
    private let writeWait: LoopWait

    init(session: YamuxSession, id: UInt32) {
        self.session = session
        self.id = id
        inbound = ReadBuffer(capacity: Int(max(session.settings.maxStreamWindow, YamuxSession.initialWindow)))
        readWait = LoopWait(loop: session.loop)
        writeWait = LoopWait(loop: session.loop)
    }

    public var loop: EventLoop { session.loop }
    /// Why the stream's session ended, once it has: a stream of an ended session reads as
    /// reset, and this says what actually happened (for logs).
    public var sessionEndReason: String? { session.endReason }
    public var spliceDescriptor: Int32? { nil }
    public var peer: SocketAddress? { session.peer }

    // MARK: From the session

    /// A data frame of `length` bytes has begun: its payload comes through `deliver`.
    func expect(_ length: UInt32) {
        receiveWindow -= length
        undelivered += length
    }

    func deliver(_ bytes: UnsafeRawBufferPointer) {
        undelivered -= UInt32(bytes.count)
        var offset = 0
        // Straight into a waiting read while nothing older is buffered (order is kept).
        if let waiting = waitingRead, inbound.isEmpty, waitingFilled < waiting.count {
            offset = min(waiting.count - waitingFilled, bytes.count)
            (waiting.baseAddress! + waitingFilled).copyMemory(from: bytes.baseAddress!, byteCount: offset)
            waitingFilled += offset
        }
        while offset < bytes.count {
            let space = inbound.writable
            // The window keeps the peer within `inbound`'s capacity; a full buffer here
            // would mean the window accounting is wrong.
            guard !space.isEmpty else {
                assertionFailure("stream \(id) received past its buffer")
                return
            }
            let take = min(space.count, bytes.count - offset)
            space.baseAddress!.copyMemory(from: bytes.baseAddress! + offset, byteCount: take)
            inbound.didWrite(take)
            offset += take
        }
        readWait.signal()
    }

    func grantSend(_ credit: UInt32) {
        sendWindow &+= credit
        writeWait.signal()
    }

    func peerFinished() {
        receivedFIN = true
        readWait.signal()
        if sentFIN { session.forget(self) }
    }

    func peerReset() {
        isReset = true
        readWait.signal()
        writeWait.signal()
        session.forget(self)
    }

    func sessionEnded() {
        isReset = true
        readWait.signal()
        writeWait.signal()
    }

    /// Grants the peer what has been read (hashicorp's rule: only once the grant is at least
    /// half the maximum window, unless flags must go out — SYN on open, ACK on accept).
    /// An ACK grants nothing beyond the initial 256 KiB: a stream nobody reads yet cannot make
    /// harp buffer its whole maximum window (1,024 streams × 6 MiB before a login otherwise).
    func sendWindowUpdate(flags: YamuxHeader.Flags = []) async {
        if flags == .ack {
            _ = await session.send(YamuxHeader(.windowUpdate, flags: flags, streamID: id, length: 0))
            return
        }
        let maximum = max(session.settings.maxStreamWindow, YamuxSession.initialWindow)
        // receiveWindow + buffered + on its way never exceeds the maximum: each grant tops it
        // up to it.
        let used = UInt32(inbound.count) + undelivered + receiveWindow
        assert(used <= maximum, "stream \(id) holds more than its window allows")
        let delta = maximum &- min(used, maximum)
        guard delta >= maximum / 2 || !flags.isEmpty else { return }
        receiveWindow += delta
        _ = await session.send(YamuxHeader(.windowUpdate, flags: flags, streamID: id, length: delta))
    }

    // MARK: ByteStream

    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration?, expectingWait: Bool) async -> Int {
        loop.assertInLoop()
        if inbound.isEmpty, !isReset, !receivedFIN, buffer.count > 0 {
            // The buffer is withdrawn before anything else is awaited: a delivery during the
            // window update below must go to `inbound`, not behind the count returned.
            let delivered = await waitForDelivery(into: buffer, timeout: timeout)
            if delivered != 0 {
                if delivered > 0 && !isReset && !receivedFIN { await sendWindowUpdate() }
                return delivered
            }
        }
        while inbound.isEmpty {
            if isReset { return -Int(ECONNRESET) }
            if receivedFIN { return 0 }
            guard await readWait.wait(timeout: timeout) else { return -Int(ETIMEDOUT) }
        }
        let count = min(buffer.count, inbound.count)
        buffer.baseAddress!.copyMemory(from: inbound.readable.baseAddress!, byteCount: count)
        inbound.consume(count)
        if !isReset && !receivedFIN { await sendWindowUpdate() }
        return count
    }

    /// Waits with `buffer` exposed to `deliver`: bytes delivered into it (> 0), 0 when they
    /// went to `inbound` instead (or the stream ended), or `-errno`.
    private func waitForDelivery(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration?) async -> Int {
        waitingRead = buffer
        waitingFilled = 0
        defer { waitingRead = nil; waitingFilled = 0 }
        while waitingFilled == 0 && inbound.isEmpty {
            if isReset { return -Int(ECONNRESET) }
            if receivedFIN { return 0 }
            // A delivery may land between the timeout and this task running again.
            if await !readWait.wait(timeout: timeout), waitingFilled == 0, inbound.isEmpty { return -Int(ETIMEDOUT) }
        }
        return waitingFilled
    }

    public func waitReadable(timeout: Duration?) async -> Int32 {
        while inbound.isEmpty && !isReset && !receivedFIN {
            guard await readWait.wait(timeout: timeout) else { return -ETIMEDOUT }
        }
        return 1
    }

    public func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration?) async -> Int32 {
        await send(bytes, inPlace: false, timeout: timeout)
    }

    /// A frame header: written in place when the caller leaves room for it.
    public var writeHeadroom: Int { YamuxHeader.size }

    /// Each frame's header goes into the 12 bytes before its payload: the caller's headroom
    /// for the first, payload already sent for the others. Saves copying every byte behind a
    /// header (`sendData`).
    public func write(afterHeadroom bytes: UnsafeRawBufferPointer, timeout: Duration?) async -> Int32 {
        await send(bytes, inPlace: true, timeout: timeout)
    }

    private func send(_ bytes: UnsafeRawBufferPointer, inPlace: Bool, timeout: Duration?) async -> Int32 {
        loop.assertInLoop()
        var offset = 0
        while offset < bytes.count {
            if isReset || sentFIN { return -EPIPE }
            if sendWindow == 0 {
                guard await writeWait.wait(timeout: timeout) else { return -ETIMEDOUT }
                continue
            }
            let count = min(bytes.count - offset, Int(sendWindow), YamuxSession.maxFrame)
            guard await session.sendData(id, flags: [], UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count]),
                                         inPlace: inPlace, timeout: timeout) else {
                return -EPIPE
            }
            sendWindow -= UInt32(count)
            offset += count
        }
        return 0
    }

    public func finishWriting() async {
        guard !sentFIN && !isReset else { return }
        sentFIN = true
        _ = await session.send(YamuxHeader(.windowUpdate, flags: .fin, streamID: id, length: 0))
        if receivedFIN { session.forget(self) }
    }

    /// FIN, and the stream is done for this side: what the peer still sends is dropped.
    public func close() async {
        await finishWriting()
        isReset = true
        readWait.signal()
        session.forget(self)
    }

    public func abort() {
        guard !isReset else { return }
        isReset = true
        readWait.signal()
        writeWait.signal()
        session.sendLater(YamuxHeader(.windowUpdate, flags: .rst, streamID: id, length: 0))
        session.forget(self)
    }
}
