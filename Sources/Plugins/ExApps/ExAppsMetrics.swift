import CoreMetrics

/// The ExApps gateway's metrics (exported by the admin plugin).
struct ExAppsMetrics: Sendable {
    private let recordHits = Counter(label: "harp_exapps_cache_total", dimensions: [("cache", "records"), ("result", "hit")])
    private let recordMisses = Counter(label: "harp_exapps_cache_total", dimensions: [("cache", "records"), ("result", "miss")])
    private let sessionHits = Counter(label: "harp_exapps_cache_total", dimensions: [("cache", "sessions"), ("result", "hit")])
    private let sessionMisses = Counter(label: "harp_exapps_cache_total", dimensions: [("cache", "sessions"), ("result", "miss")])
    private let bansActive = Meter(label: "harp_exapps_bans_active")

    /// How requests were decided: forward, control, drop, 401, 403, 404, 503.
    func decided(_ outcome: String) {
        Counter(label: "harp_exapps_decisions_total", dimensions: [("outcome", outcome)]).increment()
    }

    func recordCache(hit: Bool) { (hit ? recordHits : recordMisses).increment() }
    func sessionCache(hit: Bool) { (hit ? sessionHits : sessionMisses).increment() }

    /// Latency of one Nextcloud call, by endpoint (exapp-meta, user-info) and outcome.
    func nextcloudCall(_ endpoint: String, outcome: String, nanoseconds: UInt64) {
        Timer(label: "harp_exapps_nextcloud_seconds", dimensions: [("endpoint", endpoint), ("outcome", outcome)])
            .recordNanoseconds(Int64(nanoseconds))
    }

    func failure(_ reason: String) {
        Counter(label: "harp_exapps_failures_total", dimensions: [("reason", reason)]).increment()
    }

    func banStarted() { bansActive.increment() }
    func banEnded() { bansActive.decrement() }
}
