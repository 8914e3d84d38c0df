import HarpKernel
import Synchronization

/// A Nextcloud user as `user-info` describes them.
struct NextcloudUser: Sendable, Equatable {
    let id: String
    let level: AccessLevel
}

/// Answers of `user-info`, reused for `session_lifetime`, keyed by the session's
/// `oc_sessionPassphrase` cookie (HaRP's key: one entry serves every app). Concurrent misses
/// for one cookie make one call — HaRP made one per request, 50 for 50.
final class SessionCache: Sendable {
    enum Answer: Sendable {
        case user(NextcloudUser)
        /// Nextcloud answered 4xx: not logged in.
        case anonymous
        /// 5xx, a broken body, Nextcloud unreachable: the request gets 401.
        case failed
    }

    private let entries = Mutex(ExpiringTable<Answer>(capacity: 10_000))
    private let flights = SingleFlight<String, Answer>()
    private let lifetime: UInt64
    private let metrics: ExAppsMetrics

    init(lifetime: Duration, metrics: ExAppsMetrics) {
        self.lifetime = lifetime.nanoseconds
        self.metrics = metrics
    }

    /// The answer for a request with `cookie` (nil: no cookie, nothing cached or shared).
    func answer(cookie: String?, fetch: () async -> Answer) async -> Answer {
        guard let cookie, lifetime > 0 else { return await fetch() }
        if let cached = cached(cookie) {
            metrics.sessionCache(hit: true)
            return cached
        }
        metrics.sessionCache(hit: false)
        return await flights.run(cookie) {
            if let cached = cached(cookie) { return cached }
            let answer = await fetch()
            if case .failed = answer { return answer }  // not cached: the next request asks again
            let now = EventLoop.preciseNanos()
            entries.withLock { $0.insert(cookie, answer, until: now + lifetime, now: now) }
            return answer
        }
    }

    private func cached(_ cookie: String) -> Answer? {
        entries.withLock { $0.value(cookie, now: EventLoop.preciseNanos()) }
    }
}
