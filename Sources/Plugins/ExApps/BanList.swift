import HarpKernel
import Synchronization

/// Failures per client IP (wrong keys, forbidden routes, `..` paths, statuses a route lists in
/// `bruteforce_protection`). An IP with `count` failures inside `window` is banned: its HTTP
/// requests are dropped without a response and its frp logins refused, until enough of its
/// failures are older than the window.
final class BanList: Sendable {
    private let failures = Mutex<[String: [UInt64]]>([:])
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
        return failures.withLock { failures in
            guard var times = failures[ip] else { return false }
            let before = times.count
            times.removeAll { now &- $0 > window }
            if times.isEmpty { failures[ip] = nil } else if times.count != before { failures[ip] = times }
            if before >= count && times.count < count { metrics.banEnded() }
            return times.count >= count
        }
    }

    /// One failure for `ip`.
    func fail(_ ip: String, reason: String) {
        metrics.failure(reason)
        guard count > 0 else { return }
        let now = EventLoop.preciseNanos()
        failures.withLock { failures in
            // Bounded: a flood from many addresses keeps only IPs with recent failures.
            if failures.count >= 100_000 {
                failures = failures.filter { entry in entry.value.contains { now &- $0 <= window } }
            }
            var times = failures[ip, default: []]
            times.removeAll { now &- $0 > window }
            let wasBanned = times.count >= count
            // Only the newest `count` matter for the rule: a flood cannot grow the list.
            if times.count >= count { times.removeFirst() }
            times.append(now)
            failures[ip] = times
            if !wasBanned && times.count >= count { metrics.banStarted() }
        }
    }
}
