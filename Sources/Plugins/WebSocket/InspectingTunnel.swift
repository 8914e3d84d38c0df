import Glibc
import HTTPProxy
import HarpKernel

/// A WebSocket connection relayed frame by frame, with the checks RFC 6455 puts on each side:
/// client frames masked and server frames not (§5.1), control frames short and unfragmented
/// (§5.5), continuation order (§5.4), valid close codes (§7.4), UTF-8 text (§8.1). It also
/// limits message size and pings quiet clients. Frames are forwarded unchanged; payloads
/// stream through without being collected, so message size costs no memory.
final class InspectingTunnel: @unchecked Sendable {
    // @unchecked Sendable: both pumps run as child tasks on the connection's loop; every
    // field is touched only there.
    let connection: UpgradedConnection
    let settings: WebSocketConfiguration
    let compressed: Bool
    private var lastActivity: UInt64
    private var finished = [false, false]
    private var failure: (code: UInt16, reason: String)?
    private let gates = [WriteGate(), WriteGate()]  // writers of [client, upstream]
    private var bytes = [0, 0]                       // [to upstream, to client]
    private var aborted = false

    init(_ connection: UpgradedConnection, settings: WebSocketConfiguration) {
        self.connection = connection
        self.settings = settings
        compressed = connection.response.headers.values("Sec-WebSocket-Extensions")
            .contains { $0.lowercased().hasPrefix("permessage-deflate") }
        lastActivity = connection.loop.now
    }

    var loop: EventLoop { connection.loop }

    func run() async -> RelayResult {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.pump(fromClient: true) }
            group.addTask { await self.pump(fromClient: false) }
        }
        let outcome: RelayResult.Outcome = failure.map { .failed(side: 0, errno: Int32($0.code)) } ?? .finished
        return RelayResult(outcome: outcome, forwardBytes: bytes[0], backwardBytes: bytes[1])
    }

    /// Message state of one direction.
    private struct MessageState {
        var inMessage = false
        var isText = false
        var isCompressed = false
        var size = 0
        var utf8 = UTF8Validator()
    }

    private func pump(fromClient: Bool) async {
        let source = fromClient ? connection.client : connection.upstream
        let destination = fromClient ? connection.upstream : connection.client
        let gate = gates[fromClient ? 1 : 0]
        let capacity = 64 * 1024
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
        defer { buffer.deallocate() }
        var start = 0, end = 0
        var message = MessageState()

        /// Receives more bytes after the buffered ones; false at EOF, error or abort.
        func fill() async -> Bool {
            if start > 0 && start == end { start = 0; end = 0 }
            if end == capacity {
                buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: end - start)
                end -= start
                start = 0
            }
            while !aborted {
                let limit = waitLimit(fromClient: fromClient)
                let received = await source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[end...]), timeout: limit)
                if received > 0 {
                    end += Int(received)
                    lastActivity = loop.now
                    return true
                }
                guard received == -Int(ETIMEDOUT) else { return false }
                if await idleExpired(fromClient: fromClient) { return false }
            }
            return false
        }

        func send(_ range: Range<Int>) async -> Bool {
            let result = await destination.write(UnsafeRawBufferPointer(rebasing: buffer[range]), timeout: connection.idleTimeout)
            bytes[fromClient ? 0 : 1] += range.count
            return result == 0
        }

        // Frames that are whole in the buffer are checked and then sent together, from
        // `start` up to `cursor`: one send for a burst of small messages. A frame that is not
        // whole streams through on its own (its payload may be far larger than the buffer).
        var cursor = start
        func flush() async -> Bool {
            guard cursor > start else { return true }
            await gate.acquire()
            let sent = await send(start..<cursor)
            gate.release()
            start = cursor
            return sent
        }

        frames: while !aborted {
            let header: FrameHeader
            switch FrameHeader.parse(UnsafeRawBufferPointer(rebasing: buffer[cursor..<end])) {
            case .header(let parsed):
                header = parsed
            case .invalid(let code, let reason):
                return await fail(code, reason)
            case .incomplete:
                guard await flush(), await fill() else { break frames }
                cursor = start
                continue
            }
            let frameEnd = cursor + header.length + header.payloadLength
            if header.isControl && header.payloadLength <= 125 && frameEnd > end {
                // Control frames are judged whole (their payload is at most 125 bytes).
                guard await flush(), await fill() else { break frames }
                cursor = start
                continue
            }
            if let problem = check(header, fromClient: fromClient, &message) {
                return await fail(problem.0, problem.1)
            }
            if header.opcode == 0x8, let problem = Self.checkClose(header, UnsafeRawBufferPointer(rebasing: buffer[cursor..<end])) {
                return await fail(problem.0, problem.1)
            }
            let checksText = message.isText && !message.isCompressed && !header.isControl
            if frameEnd <= end {
                let payload = cursor + header.length..<frameEnd
                if checksText && !Self.validateText(header, UnsafeRawBufferPointer(rebasing: buffer[payload]), maskOffset: 0, &message.utf8) {
                    return await fail(1007, "invalid UTF-8 in a text message")
                }
                cursor = frameEnd
            } else {
                // Stream this frame: header, then payload as it arrives, holding the gate so
                // that no harp-made frame lands in the middle.
                guard await flush() else { break frames }
                await gate.acquire()
                var remaining = header.payloadLength
                var offset = 0
                let headerEnd = start + header.length
                guard await send(start..<headerEnd) else { gate.release(); break frames }
                start = headerEnd
                while remaining > 0 {
                    if start == end {
                        guard await fill() else { gate.release(); break frames }
                    }
                    let take = min(remaining, end - start)
                    if checksText && !Self.validateText(header, UnsafeRawBufferPointer(rebasing: buffer[start..<start + take]),
                                                        maskOffset: offset, &message.utf8) {
                        gate.release()
                        return await fail(1007, "invalid UTF-8 in a text message")
                    }
                    guard await send(start..<start + take) else { gate.release(); break frames }
                    start += take
                    offset += take
                    remaining -= take
                }
                gate.release()
                cursor = start
            }
            if !header.isControl && header.fin {
                if message.isText && !message.isCompressed && !message.utf8.isComplete {
                    return await fail(1007, "text message ends inside a UTF-8 sequence")
                }
                message = MessageState()
            }
        }
        _ = await flush()
        // EOF or error on this side: pass the FIN on; the other direction may finish.
        finished[fromClient ? 0 : 1] = true
        await destination.finishWriting()
    }

    /// Returns a close code and reason when the frame breaks a rule; updates message state.
    private func check(_ header: FrameHeader, fromClient: Bool, _ message: inout MessageState) -> (UInt16, String)? {
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

    private func waitLimit(fromClient: Bool) -> Duration {
        if finished[0] || finished[1] { return min(settings.clientFinTimeout.duration, connection.idleTimeout) }
        if fromClient && settings.pingInterval.duration > .zero { return min(settings.pingInterval.duration, connection.idleTimeout) }
        return connection.idleTimeout
    }

    /// After a receive timed out: true when the tunnel has been idle too long (and is being
    /// closed); otherwise pings the client if that side has been quiet.
    private func idleExpired(fromClient: Bool) async -> Bool {
        let idle = loop.now &- lastActivity
        let halfClosed = finished[0] || finished[1]
        let limit = halfClosed ? min(settings.clientFinTimeout.duration, connection.idleTimeout) : connection.idleTimeout
        if idle >= limit.nanoseconds {
            abort()
            return true
        }
        if fromClient && !halfClosed && settings.pingInterval.duration > .zero {
            await write(FrameHeader.serverFrame(opcode: 0x9, payload: Array("harp".utf8)), toClient: true)
        }
        return false
    }

    /// A rule was broken: the offending side gets a close frame with the code, the other
    /// side a 1001 (going away), and the connection ends.
    private func fail(_ code: UInt16, _ reason: String) async {
        guard failure == nil, !aborted else { return }
        failure = (code, reason)
        await write(FrameHeader.serverFrame(opcode: 0x8, payload: FrameHeader.closePayload(code, reason)), toClient: true)
        await write(FrameHeader.clientFrame(opcode: 0x8, payload: FrameHeader.closePayload(1001, "")), toClient: false)
        abort()
    }

    private func abort() {
        guard !aborted else { return }
        aborted = true
        shutdown(connection.client.fd, Int32(SHUT_RDWR))
        shutdown(connection.upstream.fd, Int32(SHUT_RDWR))
    }

    private func write(_ frame: [UInt8], toClient: Bool) async {
        let gate = gates[toClient ? 0 : 1]
        await gate.acquire()
        defer { gate.release() }
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: frame.count, alignment: 1)
        defer { out.deallocate() }
        out.copyBytes(from: frame)
        _ = await (toClient ? connection.client : connection.upstream).write(UnsafeRawBufferPointer(out), timeout: .seconds(5))
    }
}
