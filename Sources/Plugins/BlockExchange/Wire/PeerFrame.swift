import HarpKernel

/// The P2P wire format inside the pinned-peer TLS stream: each frame is a type byte, a 32-bit
/// big-endian body length, then the body. Bodies are bounded per type, so a peer cannot make
/// a node buffer more than its largest metadata message; a chunk's bytes follow its 32-byte
/// ID as payload, read straight into the chunk buffer (the decoder reports the ID as part of
/// the header and the bytes as payload).
enum PeerFrameType: UInt8, Sendable, CaseIterable {
    /// The first frame each side sends: magic, protocol version, capabilities.
    case hello = 1
    /// root: "send me this content's manifest".
    case getManifest = 2
    /// root, flags, the manifest's canonical encoding (deflated when flags say so).
    case manifest = 3
    /// root: "I do not know this content".
    case noManifest = 4
    /// root: "which of its chunks do you hold?" — and from now on, tell me of new ones.
    case haveQuery = 5
    /// root, flags, a bitfield over the manifest's entries (deflated when flags say so).
    case have = 6
    /// root, then entry indices (u32 BE) that the sender has verified since.
    case haveUpdate = 7
    /// chunk ID: "send me this chunk".
    case request = 8
    /// chunk ID, then the chunk's bytes as payload.
    case chunk = 9
    /// chunk ID: "I cannot send it" (never had it, or its file changed).
    case dontHave = 10
    /// chunk ID: "I no longer want it" (it came from someone else).
    case cancel = 11
    /// 8 bytes, echoed in a pong: round-trip time and keepalive.
    case ping = 12
    case pong = 13
    /// root, then entry indices (u32 BE) the sender has just requested from someone: a
    /// downloader that hears it picks other chunks first, so two downloaders of one origin
    /// rarely fetch the same chunk from it (they trade it instead once it lands).
    case fetching = 14
    /// A frame of another plugin's channel (`PeerChannel`): its own type code, 64–127.
    case channel = 64

    /// The largest body a frame of this type may carry.
    var maximumBody: Int {
        switch self {
        case .hello: 64
        case .getManifest, .noManifest, .haveQuery, .request, .dontHave, .cancel: 32
        case .manifest: 33 + PeerLimits.manifestBytes
        case .have: 33 + PeerLimits.manifestEntries / 8 + 1
        case .haveUpdate, .fetching: 32 + 4 * PeerLimits.updateIndices
        case .chunk: 32 + FastCDC.maximumSize
        case .ping, .pong: 8
        case .channel: PeerLimits.channelBytes
        }
    }
}

enum PeerLimits {
    /// A manifest's encoding: 16 MiB holds ~420,000 chunks (about 400 GiB at the average size).
    static let manifestBytes = 16 << 20
    static let manifestEntries = (manifestBytes - Manifest.tag.count) / 40
    /// Indices per have-update frame.
    static let updateIndices = 1024
    /// The most any channel frame may carry (a channel sets its own, lower, limits).
    static let channelBytes = 4 << 20
}

/// Flag bits of manifest and have frames.
enum PeerFrameFlags {
    /// The rest of the body is zlib-deflated (sent only when that is smaller).
    static let deflated: UInt8 = 1
    /// A have frame: the sender holds every chunk (no bitfield follows).
    static let complete: UInt8 = 2
}

struct PeerFrameHeader: Sendable, Equatable {
    let type: PeerFrameType
    let length: Int
    /// The type byte as sent (a channel's own code for `.channel`).
    var code: UInt8 = 0

    static let size = 5

    static func encode(_ type: PeerFrameType, body: [UInt8]) -> [UInt8] {
        var out = header(type, length: body.count)
        out += body
        return out
    }

    static func header(_ type: PeerFrameType, length: Int) -> [UInt8] {
        header(raw: type.rawValue, length: length)
    }

    static func header(raw type: UInt8, length: Int) -> [UInt8] {
        let length = UInt32(length)
        return [type, UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)]
    }
}

/// Where the next frame ends; an unknown type or an oversize body ends the connection. A
/// chunk frame's header includes its ID; its payload is the chunk's bytes. `channels` holds
/// the types other plugins registered (64–127) with their limits.
struct PeerFrameDecoder: FrameDecoder {
    var channels: [UInt8: Int] = [:]

    func decode(_ bytes: UnsafeRawBufferPointer) -> FrameDecision<PeerFrameHeader, String> {
        guard bytes.count >= PeerFrameHeader.size else { return .needMore }
        let length = Int(UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 1, as: UInt32.self)))
        if let limit = channels[bytes[0]] {
            guard length <= limit else { return .invalid("a channel frame of type \(bytes[0]) with \(length) bytes (at most \(limit))") }
            return .frame(PeerFrameHeader(type: .channel, length: length, code: bytes[0]), headerLength: PeerFrameHeader.size, payloadLength: length)
        }
        guard let type = PeerFrameType(rawValue: bytes[0]), type != .channel else { return .invalid("unknown frame type \(bytes[0])") }
        guard length <= type.maximumBody else {
            return .invalid("a \(type) frame of \(length) bytes (at most \(type.maximumBody))")
        }
        if type == .chunk {
            guard length > 32 else { return .invalid("a chunk frame of \(length) bytes (an ID and at least one byte)") }
            guard bytes.count >= PeerFrameHeader.size + 32 else { return .needMore }
            return .frame(PeerFrameHeader(type: type, length: length), headerLength: PeerFrameHeader.size + 32, payloadLength: length - 32)
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
