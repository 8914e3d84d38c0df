import HarpKernel
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
    }

    static let minimumSweep = 100_000
    private let state = Mutex(State())
    private let count: Int
    private let window: UInt64
    private let metrics: ExAppsMetrics

    init(count: Int, window: Duration, metrics: ExAppsMetrics) {
        self.count = count
        self.window = window.nanoseconds
        self.metrics = metrics
    }

    func isBanned(_ ip: String) -> Bool {
        guard count > 0 else { return false }
        let now = EventLoop.preciseNanos()
        return state.withLock { state in
            guard var times = state.failures[ip] else { return false }
            let before = times.count
            times.removeAll { now &- $0 > window }
            if times.isEmpty { state.failures[ip] = nil } else if times.count != before { state.failures[ip] = times }
            if before >= count && times.count < count { metrics.banEnded() }
            return times.count >= count
        }
    }

    /// One failure for `ip`.
    func fail(_ ip: String, reason: String) {
        metrics.failure(reason)
        guard count > 0 else { return }
        let now = EventLoop.preciseNanos()
        state.withLock { state in
            if state.failures.count >= state.sweepAt {
                // Failures older than the window no longer count; IPs left with none go (and
                // a ban that ended unseen leaves the gauge).
                let banCount = count
                let bannedBefore = state.failures.values.lazy.filter { $0.count >= banCount }.count
                state.failures = state.failures.compactMapValues { times in
                    let recent = times.filter { now &- $0 <= window }
                    return recent.isEmpty ? nil : recent
                }
                let bannedAfter = state.failures.values.lazy.filter { $0.count >= banCount }.count
                for _ in 0..<max(0, bannedBefore - bannedAfter) { metrics.banEnded() }
                // Still that many within the window (forged X-Forwarded-For behind a trusted
                // proxy): IPs that are not banned are forgotten, bans are kept.
                if state.failures.count >= Self.minimumSweep {
                    state.failures = state.failures.filter { $0.value.count >= banCount }
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
            if !wasBanned && times.count >= count { metrics.banStarted() }
        }
    }
}
