import HarpKernel

/// A WebSocket frame header (RFC 6455 §5.2).
struct FrameHeader {
    var fin: Bool
    var rsv: UInt8
    var opcode: UInt8
    var masked: Bool
    var payloadLength: Int
    var maskKey: (UInt8, UInt8, UInt8, UInt8)
    /// Bytes the header occupies on the wire.
    var length: Int

    var isControl: Bool { opcode & 0x8 != 0 }

    enum Parse {
        case incomplete
        case header(FrameHeader)
        case invalid(closeCode: UInt16, reason: String)
    }

    static func parse(_ bytes: UnsafeRawBufferPointer) -> Parse {
        guard bytes.count >= 2 else { return .incomplete }
        let first = bytes[0], second = bytes[1]
        var header = FrameHeader(fin: first & 0x80 != 0, rsv: (first >> 4) & 0x7, opcode: first & 0x0F,
                                 masked: second & 0x80 != 0, payloadLength: Int(second & 0x7F), maskKey: (0, 0, 0, 0), length: 2)
        if header.payloadLength == 126 {
            guard bytes.count >= 4 else { return .incomplete }
            header.payloadLength = Int(bytes[2]) << 8 | Int(bytes[3])
            header.length = 4
        } else if header.payloadLength == 127 {
            guard bytes.count >= 10 else { return .incomplete }
            var length: UInt64 = 0
            for i in 2..<10 { length = length << 8 | UInt64(bytes[i]) }
            guard length >> 63 == 0 else { return .invalid(closeCode: 1002, reason: "frame length has the top bit set") }
            header.payloadLength = Int(length)
            header.length = 10
        }
        if header.masked {
            guard bytes.count >= header.length + 4 else { return .incomplete }
            let at = header.length
            header.maskKey = (bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3])
            header.length += 4
        }
        return .header(header)
    }

    /// An unmasked frame as harp writes it toward a client (server frames are never masked).
    static func serverFrame(opcode: UInt8, payload: [UInt8]) -> [UInt8] {
        precondition(payload.count <= 125, "control frames carry at most 125 bytes")
        return [0x80 | opcode, UInt8(payload.count)] + payload
    }

    /// A masked frame as harp writes it toward a server (client frames must be masked).
    static func clientFrame(opcode: UInt8, payload: [UInt8]) -> [UInt8] {
        precondition(payload.count <= 125, "control frames carry at most 125 bytes")
        let key: [UInt8] = (0..<4).map { _ in UInt8.random(in: 0...255) }
        return [0x80 | opcode, 0x80 | UInt8(payload.count)] + key + payload.enumerated().map { $0.element ^ key[$0.offset & 3] }
    }

    static func closePayload(_ code: UInt16, _ reason: String) -> [UInt8] {
        [UInt8(code >> 8), UInt8(code & 0xFF)] + Array(reason.utf8.prefix(120))
    }

    /// Close codes that may appear on the wire (RFC 6455 §7.4; 1012–1014 from the IANA registry).
    static func isValidCloseCode(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014, 3000...4999: true
        default: false
        }
    }
}

/// A broken protocol rule: the close code to send and why.
struct CloseReason {
    let code: UInt16
    let reason: String
}

/// `FrameHeader.parse` as a kernel `FrameDecoder` (the payload length follows the header).
struct FrameHeaderDecoder: FrameDecoder {
    func decode(_ bytes: UnsafeRawBufferPointer) -> FrameDecision<FrameHeader, CloseReason> {
        switch FrameHeader.parse(bytes) {
        case .incomplete: .needMore
        case .header(let header): .frame(header, headerLength: header.length, payloadLength: header.payloadLength)
        case .invalid(let code, let reason): .invalid(CloseReason(code: code, reason: reason))
        }
    }
}
