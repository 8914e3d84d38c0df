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
    /// root: "send me this content's manifest, and when it is one chunk, that chunk right
    /// after it" (as if requested). A small file then costs one round trip, not two.
    case getWhole = 15
    /// A frame of another plugin's channel (`PeerChannel`): its own type code, 64–127.
    case channel = 64

    /// The largest body a frame of this type may carry.
    var maximumBody: Int {
        switch self {
        case .hello: 64
        case .getManifest, .getWhole, .noManifest, .haveQuery, .request, .dontHave, .cancel: 32
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
        var header = ByteWriter(capacity: size)
        header.u8(type)
        header.u32(UInt32(length))
        return header.bytes
    }
}

/// Where the next frame ends; an unknown type or an oversize body ends the connection. A
/// chunk frame's header includes its ID; its payload is the chunk's bytes. `channels` holds
/// the types other plugins registered (64–127) with their limits.
struct PeerFrameDecoder: FrameDecoder {
    var channels: [UInt8: Int] = [:]

    func decode(_ bytes: UnsafeRawBufferPointer) -> FrameDecision<PeerFrameHeader, PeerViolation> {
        guard bytes.count >= PeerFrameHeader.size else { return .needMore }
        let length = Int(UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 1, as: UInt32.self)))
        if let limit = channels[bytes[0]] {
            guard length <= limit else { return .invalid(.oversize(code: bytes[0], bytes: length, limit: limit)) }
            return .frame(PeerFrameHeader(type: .channel, length: length, code: bytes[0]), headerLength: PeerFrameHeader.size, payloadLength: length)
        }
        guard let type = PeerFrameType(rawValue: bytes[0]), type != .channel else { return .invalid(.unknownType(bytes[0])) }
        guard length <= type.maximumBody else { return .invalid(.oversize(code: bytes[0], bytes: length, limit: type.maximumBody)) }
        if type == .chunk {
            // An ID and at least one byte.
            guard length > 32 else { return .invalid(.malformed(.chunk, bytes: length)) }
            guard bytes.count >= PeerFrameHeader.size + 32 else { return .needMore }
            return .frame(PeerFrameHeader(type: type, length: length), headerLength: PeerFrameHeader.size + 32, payloadLength: length - 32)
        }
        return .frame(PeerFrameHeader(type: type, length: length), headerLength: PeerFrameHeader.size, payloadLength: length)
    }
}
