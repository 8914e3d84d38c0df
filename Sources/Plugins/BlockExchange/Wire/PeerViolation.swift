/// What a peer did that the protocol does not allow: its session ends, and this is the reason
/// logged and counted. A value, so that tests and callers match on the case, not a sentence.
enum PeerViolation: Error, Sendable, Equatable, CustomStringConvertible {
    /// A type byte neither the block exchange nor a registered channel defines.
    case unknownType(UInt8)
    /// A frame longer than its type allows (`code` is the type byte as sent).
    case oversize(code: UInt8, bytes: Int, limit: Int)
    /// A body whose length or layout is not its type's.
    case malformed(PeerFrameType, bytes: Int)
    /// A first frame that is not a harp Hello.
    case notHello
    case secondHello
    /// A deflated part that does not inflate within its limit.
    case doesNotInflate(PeerFrameType)
    /// A manifest whose root is not the one it was sent for.
    case manifestNotOfRoot(ChunkID)
    /// More chunk requests queued than a session keeps.
    case requestFlood(limit: Int)
    /// Queries faster than it reads the answers.
    case replyFlood(limit: Int)
    /// Chunks that do not match their IDs, this many.
    case badChunks(Int)

    var description: String {
        switch self {
        case .unknownType(let code): "unknown frame type \(code)"
        case .oversize(let code, let bytes, let limit):
            "a \(PeerFrameType(rawValue: code).map { "\($0)" } ?? "type \(code)") frame of \(bytes) bytes (at most \(limit))"
        case .malformed(let type, let bytes): "a \(type) frame of \(bytes) bytes that is not one"
        case .notHello: "a first frame that is not a harp Hello"
        case .secondHello: "a second Hello"
        case .doesNotInflate(let type): "a \(type) frame that does not inflate within its limit"
        case .manifestNotOfRoot(let root): "a manifest that does not match its root \(root)"
        case .requestFlood(let limit): "more than \(limit) requests queued"
        case .replyFlood(let limit): "more than \(limit) queries unanswered: it floods faster than it reads"
        case .badChunks(let count): "\(count) chunks that do not match their IDs"
        }
    }
}
