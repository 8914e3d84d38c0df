import HarpKernel

/// Why a peer's metadata frame was refused — a typed value, not a sentence: `reason` labels
/// `harp_sync_refused_total{reason}` and the description is the log line. A refused frame is
/// applied not at all (never half), and the peer that sent it is penalized (`PeerLink.penalize`).
enum SyncRefusal: Error, Equatable, CustomStringConvertible {
    /// The bytes end early or a field is out of its range.
    case malformed(String)
    case name(NameRefusal)
    /// An operation whose proof does not check: a relay changed it, or someone made it in
    /// another node's name.
    case forged(String)
    /// A settled state that fails a check (cycle, clock, floor, count).
    case settled(String)
    /// More than the quota of work a peer may queue.
    case quota(String)

    init(_ underrun: ByteReader.Underrun) { self = .malformed(underrun.description) }

    /// Runs a decoder that reads with `ByteReader` and refuses with `SyncRefusal`: bytes that
    /// run out become `.malformed`, a refusal passes through.
    static func decoding<T>(_ body: () throws -> T) throws(SyncRefusal) -> T {
        do {
            return try body()
        } catch let underrun as ByteReader.Underrun {
            throw SyncRefusal(underrun)
        } catch let refusal as SyncRefusal {
            throw refusal
        } catch {
            throw SyncRefusal.malformed("\(error)")
        }
    }

    var reason: String {
        switch self {
        case .malformed: "malformed"
        case .name(let refusal): "name_" + refusal.problem.rawValue
        case .forged: "forged"
        case .settled: "settled_state"
        case .quota: "quota"
        }
    }

    var description: String {
        switch self {
        case .malformed(let detail): "malformed: \(detail)"
        case .name(let refusal): "\(refusal)"
        case .forged(let detail): "an operation without its origin's proof: \(detail)"
        case .settled(let detail): "a settled state that does not check: \(detail)"
        case .quota(let detail): "over quota: \(detail)"
        }
    }
}
