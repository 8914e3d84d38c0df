import Glibc

/// How a stream read or write ended, out of the integer the ring (and `ByteStream`) returns:
/// converted once, where a caller leaves the `-errno` world, so what follows matches on a
/// case instead of comparing numbers.
public enum StreamError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The peer ended the stream (a read returned 0).
    case closed
    /// Nothing came (or nothing could be sent) within the time allowed.
    case timedOut
    /// The peer reset the connection, or is gone (`ECONNRESET`, `EPIPE`).
    case reset
    /// Any other failure: the errno.
    case failed(Int32)

    /// From a read's or write's result (0, or `-errno`).
    public init(result: Int) {
        switch -result {
        case 0: self = .closed
        case Int(ETIMEDOUT): self = .timedOut
        case Int(ECONNRESET), Int(EPIPE): self = .reset
        default: self = .failed(Int32(clamping: -result))
        }
    }

    public var description: String {
        switch self {
        case .closed: "connection closed"
        case .timedOut: "timed out"
        case .reset: "connection reset"
        case .failed(let code): "connection failed: \(String(cString: strerror(code)))"
        }
    }
}
