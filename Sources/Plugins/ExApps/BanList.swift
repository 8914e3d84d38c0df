import Foundation
import HarpKernel
import Logging
import Synchronization

/// Failures per client IP (wrong keys, forbidden routes, `..` paths, statuses a route lists in
/// `bruteforce_protection`). An IP with `count` failures inside `window` is banned: its HTTP
/// requests are dropped without a response and its frp logins refused, until enough of its
/// failures are older than the window.
final class BanList: Sendable {
    private struct State {
        var failures: [String: [UInt64]] = [:]
        /// The table size at which stale entries are next swept: twice what a sweep left, so
        /// a flood of distinct IPs costs O(1) per failure (sweeping on every failure once over
        /// a fixed size made harp 12× slower under such a flood — hostile probe).
        var sweepAt = BanList.minimumSweep
        /// The reason of each IP's newest failure (for the ban's log line and `harp exapps bans`).
        var reasons: [String: String] = [:]
    }

    static let minimumSweep = 100_000
    private let state = Mutex(State())
    private let count: Int
    private let window: UInt64
    private let metrics: ExAppsMetrics
    private let logger: Logger

    init(count: Int, window: Duration, metrics: ExAppsMetrics, logger: Logger) {
        self.count = count
        self.window = window.nanoseconds
        self.metrics = metrics
        self.logger = logger
    }

    /// A banned client: how many failures it has in the window, the newest one's reason, and
    /// when the ban ends unless it fails again (its oldest counted failure leaves the window).
    struct Ban {
        let ip: String
        let failures: Int
        let reason: String
        let endsInSeconds: Double
    }

    /// The clients banned now, soonest to end first.
    func banned() -> [Ban] {
        guard count > 0 else { return [] }
        let now = EventLoop.preciseNanos()
        return state.withLock { state in
            state.failures.compactMap { ip, times -> Ban? in
                let recent = times.filter { now &- $0 <= window }
                guard recent.count >= count, let oldest = recent.first else { return nil }
                return Ban(ip: ip, failures: recent.count, reason: state.reasons[ip] ?? "?",
                           endsInSeconds: Double(oldest &+ window &- now) / 1e9)
            }
        }.sorted { ($0.endsInSeconds, $0.ip) < ($1.endsInSeconds, $1.ip) }
    }

    /// Forgets the failures of `ip` (nil: of everyone); returns how many bans that lifted.
    func clear(_ ip: String?) -> Int {
        let now = EventLoop.preciseNanos()
        let lifted = state.withLock { state -> Int in
            let cleared = ip.map { ip in state.failures[ip].map { [ip: $0] } ?? [:] } ?? state.failures
            let lifted = cleared.values.filter { times in times.filter { now &- $0 <= window }.count >= count }.count
            if let ip {
                state.failures[ip] = nil
                state.reasons[ip] = nil
            } else {
                state.failures = [:]
                state.reasons = [:]
            }
            return count > 0 ? lifted : 0
        }
        for _ in 0..<lifted { metrics.banEnded() }
        return lifted
    }

    func isBanned(_ ip: String) -> Bool {
        guard count > 0 else { return false }
        let now = EventLoop.preciseNanos()
        return state.withLock { state in
            guard var times = state.failures[ip] else { return false }
            let before = times.count
            times.removeAll { now &- $0 > window }
            if times.isEmpty { state.failures[ip] = nil; state.reasons[ip] = nil } else if times.count != before { state.failures[ip] = times }
            if before >= count && times.count < count { metrics.banEnded() }
            return times.count >= count
        }
    }

    /// One failure for `ip`.
    func fail(_ ip: String, reason: String) {
        metrics.failure(reason)
        guard count > 0 else { return }
        let now = EventLoop.preciseNanos()
        let banFor = state.withLock { state -> Double? in
            if state.failures.count >= state.sweepAt {
                // Failures older than the window no longer count; IPs left with none go (and
                // a ban that ended unseen leaves the gauge).
                let banCount = count
                let bannedBefore = state.failures.values.lazy.filter { $0.count >= banCount }.count
                state.failures = state.failures.compactMapValues { times in
                    let recent = times.filter { now &- $0 <= window }
                    return recent.isEmpty ? nil : recent
                }
                state.reasons = state.reasons.filter { state.failures[$0.key] != nil }
                let bannedAfter = state.failures.values.lazy.filter { $0.count >= banCount }.count
                for _ in 0..<max(0, bannedBefore - bannedAfter) { metrics.banEnded() }
                // Still that many within the window (forged X-Forwarded-For behind a trusted
                // proxy): IPs that are not banned are forgotten, bans are kept.
                if state.failures.count >= Self.minimumSweep {
                    state.failures = state.failures.filter { $0.value.count >= banCount }
                    state.reasons = state.reasons.filter { state.failures[$0.key] != nil }
                }
                state.sweepAt = max(Self.minimumSweep, state.failures.count * 2)
            }
            var times = state.failures[ip, default: []]
            times.removeAll { now &- $0 > window }
            let wasBanned = times.count >= count
            // Only the newest `count` matter for the rule: a flood cannot grow the list.
            if times.count >= count { times.removeFirst() }
            times.append(now)
            state.failures[ip] = times
            state.reasons[ip] = reason
            guard !wasBanned && times.count >= count else { return nil }
            metrics.banStarted()
            return Double(times[0] &+ window &- now) / 1e9
        }
        if let seconds = banFor {
            let until = Date(timeIntervalSinceNow: seconds).formatted(.iso8601)
            logger.warning("client banned: its requests are dropped and its frp logins refused", metadata: [
                "client": "\(ip)", "reason": "\(reason)", "failures": "\(count)", "until": "\(until)",
                "clear": "harp exapps bans clear \(ip)",
            ])
        }
    }
}
