import HarpKernel

/// The P2P wire format inside the pinned-peer TLS stream: each frame is a type byte, a 32-bit
/// big-endian body length, then the body. Bodies are bounded per type, so a peer cannot make
/// a node buffer more than one chunk's worth; a chunk's bytes will follow its header as
/// payload (the decoder reports header and payload lengths separately for that).
enum PeerFrameType: UInt8, Sendable, CaseIterable {
    /// The first frame each side sends: magic, protocol version, capabilities.
    case hello = 1

    /// The largest body a frame of this type may carry.
    var maximumBody: Int {
        switch self {
        case .hello: 64
        }
    }
}

struct PeerFrameHeader: Sendable, Equatable {
    let type: PeerFrameType
    let length: Int

    static let size = 5

    static func encode(_ type: PeerFrameType, body: [UInt8]) -> [UInt8] {
        let length = UInt32(body.count)
        return [type.rawValue, UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)] + body
    }
}

/// Where the next frame ends; an unknown type or an oversize body ends the connection.
struct PeerFrameDecoder: FrameDecoder {
    func decode(_ bytes: UnsafeRawBufferPointer) -> FrameDecision<PeerFrameHeader, String> {
        guard bytes.count >= PeerFrameHeader.size else { return .needMore }
        guard let type = PeerFrameType(rawValue: bytes[0]) else { return .invalid("unknown frame type \(bytes[0])") }
        let length = Int(UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 1, as: UInt32.self)))
        guard length <= type.maximumBody else {
            return .invalid("a \(type) frame of \(length) bytes (at most \(type.maximumBody))")
        }
        return .frame(PeerFrameHeader(type: type, length: length), headerLength: PeerFrameHeader.size, payloadLength: length)
    }
}

/// The Hello: `harp-p2p` (8 bytes), the protocol version (u16 BE) and capability bits (u32
/// BE). A peer with another major version is refused with a log line naming both.
struct PeerHello: Sendable, Equatable {
    static let magic = Array("harp-p2p".utf8)
    static let currentVersion: UInt16 = 1

    let version: UInt16
    let capabilities: UInt32

    var body: [UInt8] {
        Self.magic + [UInt8(version >> 8), UInt8(version & 0xFF)]
            + [UInt8(capabilities >> 24), UInt8(capabilities >> 16 & 0xFF), UInt8(capabilities >> 8 & 0xFF), UInt8(capabilities & 0xFF)]
    }

    init(version: UInt16 = currentVersion, capabilities: UInt32 = 0) {
        self.version = version
        self.capabilities = capabilities
    }

    /// nil when the body is not a Hello.
    init?(body: UnsafeRawBufferPointer) {
        guard body.count >= 14, Array(body.prefix(8)) == Self.magic else { return nil }
        version = UInt16(body[8]) << 8 | UInt16(body[9])
        capabilities = UInt32(body[10]) << 24 | UInt32(body[11]) << 16 | UInt32(body[12]) << 8 | UInt32(body[13])
    }
}
