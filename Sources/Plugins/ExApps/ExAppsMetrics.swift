import CoreMetrics

/// The ExApps gateway's metrics (exported by the admin plugin).
struct ExAppsMetrics: Sendable {
    private let recordHits = Counter(label: "harp_exapps_cache_total", dimensions: [("cache", "records"), ("result", "hit")])
    private let recordMisses = Counter(label: "harp_exapps_cache_total", dimensions: [("cache", "records"), ("result", "miss")])
    private let sessionHits = Counter(label: "harp_exapps_cache_total", dimensions: [("cache", "sessions"), ("result", "hit")])
    private let sessionMisses = Counter(label: "harp_exapps_cache_total", dimensions: [("cache", "sessions"), ("result", "miss")])
    private let bansActive = Meter(label: "harp_exapps_bans_active")

    /// Made once: building a Counter goes through the metrics registry's lock and lookup
    /// (1.4% of harp's CPU per request when it was made per decision).
    private let decisions: [String: Counter] = Dictionary(uniqueKeysWithValues: ExAppsMetrics.outcomes.map { outcome in
        (outcome, Counter(label: "harp_exapps_decisions_total", dimensions: [("outcome", outcome)]))
    })
    static let outcomes = ["forward", "control", "docker", "drop", "401", "403", "404", "503"]

    /// How a request was decided (one of `outcomes`).
    func decided(_ outcome: String) {
        decisions[outcome]?.increment()
    }

    func recordCache(hit: Bool) { (hit ? recordHits : recordMisses).increment() }
    func sessionCache(hit: Bool) { (hit ? sessionHits : sessionMisses).increment() }

    /// Latency of one Nextcloud call, by endpoint (exapp-meta, user-info) and outcome.
    func nextcloudCall(_ endpoint: String, outcome: String, nanoseconds: UInt64) {
        Timer(label: "harp_exapps_nextcloud_seconds", dimensions: [("endpoint", endpoint), ("outcome", outcome)])
            .recordNanoseconds(Int64(nanoseconds))
    }

    private let failures: [String: Counter] = Dictionary(uniqueKeysWithValues: ExAppsMetrics.failureReasons.map { reason in
        (reason, Counter(label: "harp_exapps_failures_total", dimensions: [("reason", reason)]))
    })
    static let failureReasons = ["traversal", "no_app", "control_key", "appapi_key", "unknown_app", "internal_route", "no_route",
                                 "forbidden", "bruteforce_status", "frp_key"]

    /// One failure counted toward a ban (one of `failureReasons`; counters made once, as for
    /// decisions: a flood of failures is exactly when they run most).
    func failure(_ reason: String) {
        failures[reason]?.increment()
    }

    func banStarted() { bansActive.increment() }
    func banEnded() { bansActive.decrement() }
}
