import HarpKernel

/// Why a peer session ended: the line `peer session ended` logs, and what a test matches.
enum SessionEnd: Sendable, Equatable, CustomStringConvertible {
    /// The stream ended or failed (a silent peer is `.timedOut` after `PeerSession.silence`).
    case stream(StreamError)
    /// The stream ended or failed in the middle of a chunk's bytes.
    case insideChunk(StreamError)
    /// The peer broke the protocol.
    case violation(PeerViolation)

    /// From a read's result (0 or `-errno`).
    init(read result: Int) { self = .stream(StreamError(result: result)) }

    var description: String {
        switch self {
        case .stream(.timedOut): "silent for \(PeerSession.silence)"
        case .stream(let error): "\(error)"
        case .insideChunk(.timedOut): "silent for \(PeerSession.silence) inside a chunk"
        case .insideChunk(let error): "\(error) inside a chunk"
        case .violation(let violation): "\(violation)"
        }
    }
}
