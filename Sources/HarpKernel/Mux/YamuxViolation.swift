/// What a yamux peer did that the protocol does not allow: the session answers with a
/// go-away (protocol error) and ends, with this as its reason.
public enum YamuxViolation: Error, Sendable, Equatable, CustomStringConvertible {
    case version(UInt8)
    case frameType(UInt8)
    case flags(UInt16)
    /// A SYN for a stream that is open, or whose ID is not the peer's to open (or 0).
    case synForStream(UInt32)
    /// More data than the stream's receive window allows.
    case overrun(stream: UInt32, bytes: UInt32, window: UInt32)

    public var description: String {
        switch self {
        case .version(let version): "yamux version \(version) (expected 0)"
        case .frameType(let type): "unknown yamux frame type \(type)"
        case .flags(let flags): "unknown yamux flags 0x\(String(flags, radix: 16))"
        case .synForStream(let id): "SYN for stream \(id), which is in use or not the peer's to open"
        case .overrun(let id, let bytes, let window): "stream \(id) sent \(bytes) bytes with a window of \(window)"
        }
    }
}
