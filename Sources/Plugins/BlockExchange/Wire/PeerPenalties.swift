import HarpKernel
import Synchronization

/// Peers that broke the protocol lately (a forged operation, a name that climbs out of the
/// folder, a flood): their session is closed and new ones are refused until the penalty ends
/// — a minute, doubling with each new offence up to an hour — so a compromised peer costs its
/// victims one frame's work per penalty, not a stream of them.
public final class PeerPenalties: Sendable {
    static let first: Duration = .seconds(60)
    static let longest: Duration = .seconds(3600)
    private let penalties = Mutex<[NodeID: (until: UInt64, next: Duration)]>([:])

    /// Starts (or lengthens) `peer`'s penalty; returns how long it lasts.
    @discardableResult
    func penalize(_ peer: NodeID) -> Duration {
        let now = EventLoop.preciseNanos()
        return penalties.withLock { all in
            let length = all[peer]?.next ?? Self.first
            all[peer] = (now + length.nanoseconds, min(length * 2, Self.longest))
            return length
        }
    }

    /// How long `peer` stays refused, or nil.
    func remaining(_ peer: NodeID) -> Duration? {
        let now = EventLoop.preciseNanos()
        return penalties.withLock { all in
            guard let until = all[peer]?.until, until > now else { return nil }
            return .nanoseconds(Int64(until - now))
        }
    }
}
