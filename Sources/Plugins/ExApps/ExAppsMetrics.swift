import CoreMetrics
import Synchronization

/// The ExApps gateway's metrics (exported by the admin plugin).
final class ExAppsMetrics: Sendable {
    private let recordHits = Counter(label: "harp_exapps_cache_total", dimensions: [("cache", "records"), ("result", "hit")])
    private let recordMisses = Counter(label: "harp_exapps_cache_total", dimensions: [("cache", "records"), ("result", "miss")])
    private let sessionHits = Counter(label: "harp_exapps_cache_total", dimensions: [("cache", "sessions"), ("result", "hit")])
    private let sessionMisses = Counter(label: "harp_exapps_cache_total", dimensions: [("cache", "sessions"), ("result", "miss")])
    private let bansActive = Meter(label: "harp_exapps_bans_active")

    static let outcomes = ["forward", "control", "docker", "drop", "401", "403", "404", "503"]

    /// One app's counters, made once per app: building a Counter goes through the metrics
    /// registry's lock and lookup (1.4% of harp's CPU per request when it was made per
    /// decision). The `app` label is an app harp knows (a record from Nextcloud or AppAPI) or
    /// "" for everything else, so a client inventing app ids cannot grow the label set.
    final class AppCounters: Sendable {
        let decisions: [String: Counter]
        let bytesFromClient: Counter
        let bytesToClient: Counter

        init(app: String) {
            decisions = Dictionary(uniqueKeysWithValues: ExAppsMetrics.outcomes.map { outcome in
                (outcome, Counter(label: "harp_exapps_decisions_total", dimensions: [("outcome", outcome), ("app", app)]))
            })
            bytesFromClient = Counter(label: "harp_exapps_bytes_total", dimensions: [("direction", "from_client"), ("app", app)])
            bytesToClient = Counter(label: "harp_exapps_bytes_total", dimensions: [("direction", "to_client"), ("app", app)])
        }

        /// How a request was decided (one of `outcomes`).
        func decided(_ outcome: String) { decisions[outcome]?.increment() }

        /// An exchange's bytes, spliced ones and upgraded connections' included.
        func traffic(fromClient: Int, toClient: Int) {
            if fromClient > 0 { bytesFromClient.increment(by: fromClient) }
            if toClient > 0 { bytesToClient.increment(by: toClient) }
        }
    }

    /// Requests for no app harp knows (and those dropped before the app is read).
    let unknownApp = AppCounters(app: "")

    private let apps = Mutex<[String: AppCounters]>([:])

    /// The counters of a known app's id (looked up once per request, when its record is found).
    func app(_ app: String) -> AppCounters {
        apps.withLock { apps in
            if let counters = apps[app] { return counters }
            let counters = AppCounters(app: app)
            apps[app] = counters
            return counters
        }
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
