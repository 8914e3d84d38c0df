import Glibc
import HTTPProxy
import HarpKernel

/// A WebSocket connection relayed frame by frame, with the checks RFC 6455 puts on each side:
/// client frames masked and server frames not (§5.1), control frames short and unfragmented
/// (§5.5), continuation order (§5.4), valid close codes (§7.4), UTF-8 text (§8.1). It also
/// limits message size and pings quiet clients. Frames are forwarded unchanged; payloads
/// stream through without being collected, so message size costs no memory.
final class InspectingTunnel: @unchecked Sendable {
    // @unchecked Sendable: both directions run as the pump's child tasks on the connection's
    // loop; every field is touched only there.
    let connection: UpgradedConnection
    let settings: WebSocketConfiguration
    let compressed: Bool
    fileprivate let pump: Pump
    /// Writers of `[client, upstream]`: harp's own pings and closes never land inside a
    /// forwarded frame.
    fileprivate let writers: [FrameWriter]
    private var failure: CloseReason?

    init(_ connection: UpgradedConnection, settings: WebSocketConfiguration, meter: RelayMeter?) {
        self.connection = connection
        self.settings = settings
        compressed = connection.response.headers.values("Sec-WebSocket-Extensions")
            .contains { $0.lowercased().hasPrefix("permessage-deflate") }
        pump = Pump(loop: connection.loop, connection.client, connection.upstream, idleTimeout: connection.idleTimeout,
                    halfClosedTimeout: settings.clientFinTimeout.duration, meter: meter)
        writers = [FrameWriter(stream: connection.client), FrameWriter(stream: connection.upstream)]
    }

    func run() async -> RelayResult {
        await pump.run { side in await self.inspect(fromClient: side == 0) }
    }

    /// Message state of one direction.
    fileprivate struct MessageState {
        var inMessage = false
        var isText = false
        var isCompressed = false
        var size = 0
        var utf8 = UTF8Validator()
    }

    /// One direction: frames are read into a buffer, checked, and sent on (`Direction`).
    private func inspect(fromClient: Bool) async {
        await Direction(self, fromClient: fromClient).run()
    }

    /// One direction's reading, checking and sending. Frames that are whole in the buffer go
    /// out together (`pending` bytes at its front: one send for a burst of small messages); a
    /// frame that is not whole streams through on its own (`stream`: its payload may be far
    /// larger than the buffer), holding the writer so nothing lands inside it. Loop-confined:
    /// it runs as one of the pump's two tasks.
    private final class Direction {
        unowned let tunnel: InspectingTunnel
        let fromClient: Bool
        let side: Int
        let writer: FrameWriter
        let reader: FramedReader
        var buffer: ReadBuffer { reader.buffer }
        var pump: Pump { tunnel.pump }
        /// Checked bytes at the front of the buffer, not sent yet.
        var pending = 0
        var message = MessageState()

        init(_ tunnel: InspectingTunnel, fromClient: Bool) {
            self.tunnel = tunnel
            self.fromClient = fromClient
            side = fromClient ? 0 : 1
            writer = tunnel.writers[fromClient ? 1 : 0]
            reader = FramedReader(stream: tunnel.pump.streams[side], capacity: 64 * 1024, growsWhenFull: true)
        }

        func run() async {
            let decoder = FrameHeaderDecoder()
            frames: while pump.outcome == nil {
                let header: FrameHeader
                switch decoder.decode(UnsafeRawBufferPointer(rebasing: buffer.readable[pending...])) {
                case .frame(let parsed, _, _):
                    header = parsed
                case .invalid(let broken):
                    return await tunnel.fail(broken.code, broken.reason)
                case .needMore:
                    guard await flush(), await fill() else { break frames }
                    continue
                }
                let frameEnd = pending + header.length + header.payloadLength
                if header.isControl && header.payloadLength <= 125 && frameEnd > buffer.count {
                    // Control frames are judged whole (their payload is at most 125 bytes).
                    guard await flush(), await fill() else { break frames }
                    continue
                }
                if let problem = tunnel.check(header, fromClient: fromClient, &message) {
                    return await tunnel.fail(problem.0, problem.1)
                }
                if header.opcode == 0x8, let problem = InspectingTunnel.checkClose(header, UnsafeRawBufferPointer(rebasing: buffer.readable[pending...])) {
                    return await tunnel.fail(problem.0, problem.1)
                }
                let checksText = message.isText && !message.isCompressed && !header.isControl
                if frameEnd <= buffer.count {
                    let payload = pending + header.length..<frameEnd
                    if checksText && !InspectingTunnel.validateText(header, UnsafeRawBufferPointer(rebasing: buffer.readable[payload]), maskOffset: 0,
                                                                    &message.utf8) {
                        return await tunnel.fail(1007, "invalid UTF-8 in a text message")
                    }
                    pending = frameEnd
                } else {
                    guard await flush() else { break frames }
                    switch await stream(header, checksText: checksText) {
                    case .sent: break
                    case .invalidText: return await tunnel.fail(1007, "invalid UTF-8 in a text message")
                    case .ended: break frames
                    }
                }
                if !header.isControl && header.fin {
                    if message.isText && !message.isCompressed && !message.utf8.isComplete {
                        return await tunnel.fail(1007, "text message ends inside a UTF-8 sequence")
                    }
                    message = MessageState()
                }
            }
            // EOF or error on this side: what was checked goes on; the pump passes the FIN on.
            _ = await flush()
        }

        /// Receives more bytes after the buffered ones; false at EOF, error or the pump's end.
        func fill() async -> Bool {
            while pump.outcome == nil {
                let received = await reader.fill(timeout: tunnel.waitLimit(fromClient: fromClient))
                if received > 0 {
                    pump.touch()
                    return true
                }
                guard received == -Int(ETIMEDOUT) else { return false }
                if await tunnel.idleExpired(fromClient: fromClient) { return false }
            }
            return false
        }

        /// Sends the first `count` buffered bytes on and consumes them.
        func send(_ count: Int) async -> Bool {
            let result = await writer.stream.write(UnsafeRawBufferPointer(rebasing: buffer.readable[0..<count]), timeout: tunnel.connection.idleTimeout)
            buffer.consume(count)
            pump.moved(count, side: side)
            return result == 0
        }

        /// Sends the checked frames waiting at the front of the buffer.
        func flush() async -> Bool {
            guard pending > 0 else { return true }
            let count = pending
            pending = 0
            return await writer.exclusive { await self.send(count) }
        }

        enum Streamed {
            case sent
            case invalidText
            /// The stream ended or failed (or the pump did) inside the frame.
            case ended
        }

        /// A frame larger than what is buffered: its header, then its payload as it arrives,
        /// checked piece by piece when it is text, with the writer held throughout.
        func stream(_ header: FrameHeader, checksText: Bool) async -> Streamed {
            var invalidText = false
            let streamed = await writer.exclusive { () async -> Bool in
                guard await self.send(header.length) else { return false }
                var remaining = header.payloadLength
                var offset = 0
                while remaining > 0 {
                    if self.buffer.isEmpty {
                        guard await self.fill() else { return false }
                    }
                    let take = min(remaining, self.buffer.count)
                    if checksText && !InspectingTunnel.validateText(header, UnsafeRawBufferPointer(rebasing: self.buffer.readable[0..<take]),
                                                                    maskOffset: offset, &self.message.utf8) {
                        invalidText = true
                        return false
                    }
                    guard await self.send(take) else { return false }
                    offset += take
                    remaining -= take
                }
                return true
            }
            return invalidText ? .invalidText : streamed ? .sent : .ended
        }
    }

    /// Returns a close code and reason when the frame breaks a rule; updates message state.
    fileprivate func check(_ header: FrameHeader, fromClient: Bool, _ message: inout MessageState) -> (UInt16, String)? {
        if fromClient && !header.masked { return (1002, "client frame not masked") }
        if !fromClient && header.masked { return (1002, "server frame masked") }
        switch header.opcode {
        case 0x0:
            guard message.inMessage else { return (1002, "continuation frame outside a message") }
            if header.rsv != 0 { return (1002, "reserved bits set on a continuation frame") }
        case 0x1, 0x2:
            guard !message.inMessage else { return (1002, "new message before the previous one ended") }
            // RSV1 marks a compressed message when permessage-deflate was negotiated (RFC 7692).
            if header.rsv != 0 && !(compressed && header.rsv == 0x4) { return (1002, "reserved bits set") }
            message.inMessage = true
            message.isText = header.opcode == 0x1
            message.isCompressed = header.rsv == 0x4
        case 0x8, 0x9, 0xA:
            if !header.fin { return (1002, "fragmented control frame") }
            if header.payloadLength > 125 { return (1002, "control frame over 125 bytes") }
            if header.rsv != 0 { return (1002, "reserved bits set on a control frame") }
            return nil
        default:
            return (1002, "unknown opcode \(header.opcode)")
        }
        message.size += header.payloadLength
        if message.size > settings.maxMessageSize { return (1009, "message over \(settings.maxMessageSize) bytes") }
        return nil
    }

    /// A close frame's payload (`frame` starts at its header): empty, or a valid code and a
    /// UTF-8 reason (§5.5.1, §7.4).
    static func checkClose(_ header: FrameHeader, _ frame: UnsafeRawBufferPointer) -> (UInt16, String)? {
        let payload = unmasked(header, UnsafeRawBufferPointer(rebasing: frame[header.length..<header.length + header.payloadLength]), offset: 0)
        if payload.isEmpty { return nil }
        if payload.count == 1 { return (1002, "close frame with a 1-byte payload") }
        let code = UInt16(payload[0]) << 8 | UInt16(payload[1])
        if !FrameHeader.isValidCloseCode(code) { return (1002, "invalid close code \(code)") }
        var utf8 = UTF8Validator()
        let valid = payload[2...].withUnsafeBytes { utf8.feed($0) } && utf8.isComplete
        return valid ? nil : (1007, "invalid UTF-8 in the close reason")
    }

    /// Feeds a piece of a text payload to the validator, unmasking a copy if needed.
    /// `maskOffset` is the piece's position in the frame payload (the mask key cycles by 4).
    static func validateText(_ header: FrameHeader, _ piece: UnsafeRawBufferPointer, maskOffset: Int,
                             _ validator: inout UTF8Validator) -> Bool {
        guard header.masked else { return validator.feed(piece) }
        return unmasked(header, piece, offset: maskOffset).withUnsafeBytes { validator.feed($0) }
    }

    static func unmasked(_ header: FrameHeader, _ piece: UnsafeRawBufferPointer, offset: Int) -> [UInt8] {
        guard header.masked else { return Array(piece) }
        let key = [header.maskKey.0, header.maskKey.1, header.maskKey.2, header.maskKey.3]
        var out = [UInt8](repeating: 0, count: piece.count)
        for i in 0..<piece.count { out[i] = piece[i] ^ key[(offset + i) & 3] }
        return out
    }

    /// How long a read may wait: the pump's limit, or the ping interval on the client side.
    fileprivate func waitLimit(fromClient: Bool) -> Duration {
        let ping = settings.pingInterval.duration
        if fromClient && !pump.isHalfClosed && ping > .zero { return min(ping, pump.readLimit) }
        return pump.readLimit
    }

    /// After a receive timed out: true when the tunnel has been idle too long (and is being
    /// closed); otherwise pings the client if that side has been quiet.
    fileprivate func idleExpired(fromClient: Bool) async -> Bool {
        if pump.idleExpired() { return true }
        if fromClient && !pump.isHalfClosed && settings.pingInterval.duration > .zero {
            _ = await writers[0].write(FrameHeader.serverFrame(opcode: 0x9, payload: Array("harp".utf8)), timeout: .seconds(5))
        }
        return false
    }

    /// A rule was broken: the offending side gets a close frame with the code, the other
    /// side a 1001 (going away), and the connection ends.
    fileprivate func fail(_ code: UInt16, _ reason: String) async {
        guard failure == nil, pump.outcome == nil else { return }
        failure = CloseReason(code: code, reason: reason)
        _ = await writers[0].write(FrameHeader.serverFrame(opcode: 0x8, payload: FrameHeader.closePayload(code, reason)), timeout: .seconds(5))
        _ = await writers[1].write(FrameHeader.clientFrame(opcode: 0x8, payload: FrameHeader.closePayload(1001, "")), timeout: .seconds(5))
        pump.end(.failed(side: 0, errno: Int32(code)))
    }
}
