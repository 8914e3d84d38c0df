/// A yamux frame header (hashicorp/yamux spec.md; frp uses fatedier/yamux, wire-identical):
/// version 0, type, flags (u16 BE), stream id (u32 BE), length (u32 BE) — 12 bytes. For data
/// frames `length` bytes of payload follow; for window updates it is the credit granted, for
/// pings an opaque value echoed back, for go-away the reason code.
public struct YamuxHeader: Equatable, Sendable {
    public enum Kind: UInt8, Sendable {
        case data = 0
        case windowUpdate = 1
        case ping = 2
        case goAway = 3
    }

    public struct Flags: OptionSet, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// Opens a stream (or starts a ping).
        public static let syn = Flags(rawValue: 1)
        /// Accepts a stream (or answers a ping).
        public static let ack = Flags(rawValue: 2)
        /// The sender will send no more on this stream (half-close).
        public static let fin = Flags(rawValue: 4)
        /// The stream is reset at once.
        public static let rst = Flags(rawValue: 8)
    }

    /// Go-away reasons.
    public enum GoAway: UInt32, Sendable {
        case normal = 0
        case protocolError = 1
        case internalError = 2
    }

    public static let size = 12

    public var kind: Kind
    public var flags: Flags
    public var streamID: UInt32
    public var length: UInt32

    public init(_ kind: Kind, flags: Flags = [], streamID: UInt32, length: UInt32) {
        self.kind = kind
        self.flags = flags
        self.streamID = streamID
        self.length = length
    }

    /// Writes the 12 header bytes at `out`.
    public func write(to out: UnsafeMutableRawPointer) {
        out.storeBytes(of: 0, as: UInt8.self)
        out.storeBytes(of: kind.rawValue, toByteOffset: 1, as: UInt8.self)
        out.storeBytes(of: flags.rawValue.bigEndian, toByteOffset: 2, as: UInt16.self)
        out.storeBytes(of: streamID.bigEndian, toByteOffset: 4, as: UInt32.self)
        out.storeBytes(of: length.bigEndian, toByteOffset: 8, as: UInt32.self)
    }

    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.withUnsafeMutableBytes { write(to: $0.baseAddress!) }
        return out
    }
}

/// Finds yamux headers in a byte stream. A data frame's payload length is its `length`; the
/// session checks it against the stream's receive window (a peer that overruns the window
/// breaks the protocol).
public struct YamuxHeaderDecoder: FrameDecoder {
    public init() {}

    public func decode(_ bytes: UnsafeRawBufferPointer) -> FrameDecision<YamuxHeader, YamuxViolation> {
        guard bytes.count >= YamuxHeader.size else { return .needMore }
        guard bytes[0] == 0 else { return .invalid(.version(bytes[0])) }
        guard let kind = YamuxHeader.Kind(rawValue: bytes[1]) else { return .invalid(.frameType(bytes[1])) }
        let flags = UInt16(bytes[2]) << 8 | UInt16(bytes[3])
        guard flags & ~0x0F == 0 else { return .invalid(.flags(flags)) }
        let streamID = UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        let length = UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        let header = YamuxHeader(kind, flags: YamuxHeader.Flags(rawValue: flags), streamID: streamID, length: length)
        return .frame(header, headerLength: YamuxHeader.size, payloadLength: kind == .data ? Int(length) : 0)
    }
}
