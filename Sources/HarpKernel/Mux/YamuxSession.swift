import Glibc

/// A yamux session (hashicorp/yamux's spec, as frp's fatedier/yamux speaks it) over any
/// `ByteStream` — a TLS session or a plain socket. One reader task dispatches frames; writers
/// share the connection through a `FrameWriter`, so a data frame is never split by another.
///
/// Flow control per stream: each side may send at most the window the other granted (256 KiB
/// at first, raised with window updates up to `maxStreamWindow`). Data beyond the window is a
/// protocol error that ends the session (go-away 1). A stream the peer opens (SYN) is ACKed
/// at once (frpc gives up on a stream that is not ACKed within 75 s), granting nothing past
/// the initial 256 KiB: the rest of `maxStreamWindow` comes as the stream is read, so a peer
/// cannot make harp buffer every stream's maximum (frps grants it all with the ACK).
///
/// Loop-confined: create, run and use it on one loop.
public final class YamuxSession: @unchecked Sendable {
    // @unchecked Sendable: every member is touched only on `loop`'s thread.
    public struct Settings: Sendable {
        /// The receive window a stream grows to (frp raises yamux's 256 KiB to 6 MiB).
        public var maxStreamWindow: UInt32 = 6 * 1024 * 1024
        /// Ping the peer this often; a peer silent for two intervals is gone. nil: no pings.
        public var keepAliveInterval: Duration? = .seconds(30)
        /// Streams open at once, and streams waiting to be accepted; more are reset (RST).
        public var maxStreams = 1024
        public var acceptBacklog = 256

        public init() {}
    }

    /// The window every stream starts with (yamux spec).
    public static let initialWindow: UInt32 = 256 * 1024
    /// Largest data frame harp sends: one copy buffer's worth.
    static let maxFrame = 256 * 1024
    /// What one read from the connection may take. The reader consumes each frame as it
    /// arrives, so its buffer used to stay at `ReadBuffer`'s 4 KiB first allocation: a GiB
    /// crossed in 4 KiB reads, deliveries and relay writes (now the reader grows: see
    /// `FramedReader.growsWhenFull`). With that, payload delivered straight into a waiting
    /// read and headers written in place (`YamuxStream`), TLS with tcpMux costs 1.8–1.9 CPU
    /// s/GB in `bench/frp.sh` (2.3–2.5 with 4 KiB reads; two runs each).
    static let readChunk = 64 * 1024

    public let loop: EventLoop
    let transport: any ByteStream
    let writer: FrameWriter
    let settings: Settings
    let isClient: Bool
    private var streams: [UInt32: YamuxStream] = [:]
    private var backlog: [YamuxStream] = []
    private let acceptWait: LoopWait
    private var nextID: UInt32
    public private(set) var endReason: String?
    private var lastHeard: UInt64
    private var pingCount: UInt32 = 0
    private lazy var keepAlive = LoopTimer(loop: loop) { [unowned self] in keepAliveTick() }
    /// Bytes already read from `transport` (the caller looked at them to pick the protocol).
    private let buffered: ReadBuffer?

    /// `isClient`: the side that opens odd-numbered streams (frpc); harp's server opens none.
    /// `buffered`: bytes the caller already read from `transport`, to be decoded first.
    public init(transport: any ByteStream, isClient: Bool, settings: Settings = Settings(), buffered: ReadBuffer? = nil) {
        self.buffered = buffered
        loop = transport.loop
        self.transport = transport
        writer = FrameWriter(stream: transport)
        self.settings = settings
        self.isClient = isClient
        acceptWait = LoopWait(loop: transport.loop)
        nextID = isClient ? 1 : 2
        lastHeard = transport.loop.now
    }

    public var peer: SocketAddress? { transport.peer }

    // MARK: Reading

    public func run() async {
        loop.assertInLoop()
        if let interval = settings.keepAliveInterval { keepAlive.arm(after: interval) }
        let reader = FramedReader(stream: transport, buffer: buffered ?? ReadBuffer(capacity: Self.readChunk), growsWhenFull: true)
        var decoder = YamuxHeaderDecoder()
        while endReason == nil {
            switch await reader.next(&decoder, timeout: nil) {
            case .frame(let header, let headerLength, _):
                reader.buffer.consume(headerLength)
                lastHeard = loop.now
                if let violation = await handle(header, reader) {
                    await goAway(.protocolError)
                    end("\(violation)")
                }
            case .invalid(let violation):
                await goAway(.protocolError)
                end("\(violation)")
            case .full:
                end("yamux reader buffer full")
            case .ended(let result):
                end("\(StreamError(result: result))")
            }
        }
        keepAlive.cancel()
    }

    /// One frame; returns a protocol violation, if any (the session then ends).
    private func handle(_ header: YamuxHeader, _ reader: FramedReader) async -> YamuxViolation? {
        switch header.kind {
        case .ping:
            if header.flags.contains(.syn) {
                _ = await send(YamuxHeader(.ping, flags: .ack, streamID: 0, length: header.length))
            }
            return nil
        case .goAway:
            end(header.length == 0 ? "peer went away" : "peer went away with code \(header.length)")
            return nil
        case .data, .windowUpdate:
            break
        }
        var stream = streams[header.streamID]
        if header.flags.contains(.syn) {
            let peerParity: UInt32 = isClient ? 0 : 1
            guard stream == nil, header.streamID != 0, header.streamID % 2 == peerParity else {
                return .synForStream(header.streamID)
            }
            if streams.count >= settings.maxStreams || backlog.count >= settings.acceptBacklog {
                _ = await send(YamuxHeader(.windowUpdate, flags: .rst, streamID: header.streamID, length: 0))
                return await discard(header, reader)
            }
            let opened = YamuxStream(session: self, id: header.streamID)
            streams[header.streamID] = opened
            stream = opened
            await opened.sendWindowUpdate(flags: .ack)
            backlog.append(opened)
            acceptWait.signal()
        }
        guard let stream else { return await discard(header, reader) }  // a stream already gone
        if header.kind == .windowUpdate {
            stream.grantSend(header.length)
        } else if header.length > 0 {
            guard header.length <= stream.receiveWindow else {
                return .overrun(stream: header.streamID, bytes: header.length, window: stream.receiveWindow)
            }
            stream.expect(header.length)
            // An end here is reported by the next read.
            guard await reader.pass(Int(header.length), timeout: nil, to: { stream.deliver($0) }) > 0 else { return nil }
        }
        if header.flags.contains(.rst) {
            stream.peerReset()
        } else if header.flags.contains(.fin) {
            stream.peerFinished()
        }
        return nil
    }

    /// Skips a data frame's payload (a stream that is gone or refused).
    private func discard(_ header: YamuxHeader, _ reader: FramedReader) async -> YamuxViolation? {
        if header.kind == .data { _ = await reader.pass(Int(header.length), timeout: nil) { _ in } }
        return nil
    }

    // MARK: Streams

    public func accept() async -> YamuxStream? {
        loop.assertInLoop()
        while backlog.isEmpty {
            if endReason != nil { return nil }
            _ = await acceptWait.wait(timeout: nil)
        }
        return backlog.removeFirst()
    }

    public func open() async -> YamuxStream? {
        loop.assertInLoop()
        guard endReason == nil else { return nil }
        let stream = YamuxStream(session: self, id: nextID)
        nextID &+= 2
        streams[stream.id] = stream
        await stream.sendWindowUpdate(flags: .syn)
        return endReason == nil ? stream : nil
    }

    func forget(_ stream: YamuxStream) {
        if streams[stream.id] === stream { streams[stream.id] = nil }
    }

    // MARK: Writing

    /// Sends a header-only frame. False when the connection failed.
    func send(_ header: YamuxHeader) async -> Bool {
        guard endReason == nil else { return false }
        let ok = await writer.write(header.bytes, timeout: .seconds(10)) == 0
        if !ok { end("writing to the connection failed") }
        return ok
    }

    /// Sends one data frame: header and payload in one write (one TLS record run). With
    /// `inPlace`, the header goes into the `YamuxHeader.size` bytes before `payload`, which
    /// the caller lets this overwrite (`ByteStream.writeHeadroom`); otherwise header and
    /// payload are copied into a buffer together.
    func sendData(_ streamID: UInt32, flags: YamuxHeader.Flags, _ payload: UnsafeRawBufferPointer, inPlace: Bool,
                  timeout: Duration?) async -> Bool {
        guard endReason == nil else { return false }
        assert(payload.count <= Self.maxFrame, "a data frame fits one copy buffer")
        let header = YamuxHeader(.data, flags: flags, streamID: streamID, length: UInt32(payload.count))
        let ok: Bool
        if inPlace, payload.count > 0 {
            let frame = UnsafeMutableRawPointer(mutating: payload.baseAddress!) - YamuxHeader.size
            header.write(to: frame)
            ok = await writer.write(UnsafeRawBufferPointer(start: frame, count: YamuxHeader.size + payload.count), timeout: timeout) == 0
        } else {
            let frame = loop.copyBuffers.take()
            defer { loop.copyBuffers.give(frame) }
            header.write(to: frame.baseAddress!)
            if payload.count > 0 { (frame.baseAddress! + YamuxHeader.size).copyMemory(from: payload.baseAddress!, byteCount: payload.count) }
            ok = await writer.write(UnsafeRawBufferPointer(rebasing: frame[0..<YamuxHeader.size + payload.count]), timeout: timeout) == 0
        }
        if !ok { end("writing to the connection failed") }
        return ok
    }

    /// Sends a frame from synchronous code (a stream's abort).
    func sendLater(_ header: YamuxHeader) {
        guard endReason == nil else { return }
        loop.spawn { [self] in _ = await send(header) }
    }

    // MARK: Ending

    private func goAway(_ code: YamuxHeader.GoAway) async {
        _ = await send(YamuxHeader(.goAway, streamID: 0, length: code.rawValue))
    }

    public func close() async {
        guard endReason == nil else { return }
        await goAway(.normal)
        end("closed")
    }

    /// Ends the session at once (no go-away): every stream is reset, waiters wake, the
    /// connection is aborted. Synchronous, for cleanup paths; `close()` says goodbye first.
    public func end(_ reason: String) {
        guard endReason == nil else { return }
        endReason = reason
        let open = streams.values
        streams.removeAll()
        for stream in open { stream.sessionEnded() }
        backlog.removeAll()
        acceptWait.signal()
        keepAlive.cancel()
        transport.abort()
    }

    private func keepAliveTick() {
        guard endReason == nil, let interval = settings.keepAliveInterval else { return }
        if loop.now &- lastHeard > 2 * interval.nanoseconds {
            end("peer silent for two keep-alive intervals")
            return
        }
        pingCount &+= 1
        sendLater(YamuxHeader(.ping, flags: .syn, streamID: 0, length: pingCount))
        keepAlive.arm(after: interval)
    }
}
