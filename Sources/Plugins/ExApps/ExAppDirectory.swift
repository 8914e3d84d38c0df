import Foundation
import HTTPProxy
import HarpKernel
import Synchronization

/// The ExApp records, shared by every loop: found records are kept until AppAPI replaces or
/// deletes them (`/exapp_storage`), "unknown" is remembered for `unknown_app_ttl`, and
/// concurrent misses for one app make one Nextcloud call.
final class ExAppDirectory: Sendable {
    enum Lookup: Sendable {
        case found(ExAppEntry)
        case unknown
        /// Nextcloud answered 401: it refuses harp's key — or, in AppAPI versions that hide
        /// which apps exist, it does not know the app. Cached like `unknown`, but it counts
        /// toward no ban: a wrong key on harp's side is not the user's failure.
        case refused
        /// Nextcloud could not answer (down, timed out, a broken reply): nothing is cached.
        case failed
    }

    private struct State {
        var records: [String: ExAppEntry] = [:]
        /// App ids Nextcloud does not know, until "unknown" stops being believed. Bounded: ids
        /// are attacker-chosen (/exapps/<random>). The value: whether Nextcloud answered 401.
        var unknown = ExpiringTable<Bool>(capacity: 10_000)
    }

    private let state = Mutex(State())
    private let flights = SingleFlight<String, Lookup>()
    private let unknownTTL: UInt64
    private let metrics: ExAppsMetrics

    init(unknownTTL: Duration, metrics: ExAppsMetrics) {
        self.unknownTTL = unknownTTL.nanoseconds
        self.metrics = metrics
    }

    /// The record for `appID` (lower-cased), asking `fetch` (Nextcloud) on a miss.
    func lookup(_ appID: String, fetch: () async -> Lookup) async -> Lookup {
        if let cached = cached(appID) {
            metrics.recordCache(hit: true)
            return cached
        }
        metrics.recordCache(hit: false)
        return await flights.run(appID) {
            // Another flight may have just stored it.
            if let cached = cached(appID) { return cached }
            let result = await fetch()
            state.withLock { state in
                switch result {
                case .found(let entry): state.records[appID] = entry
                case .unknown, .refused:
                    let now = EventLoop.preciseNanos()
                    state.unknown.insert(appID, result.isRefused, until: now + unknownTTL, now: now)
                case .failed: break
                }
            }
            return result
        }
    }

    private func cached(_ appID: String) -> Lookup? {
        state.withLock { state in
            if let entry = state.records[appID] { return .found(entry) }
            return state.unknown.value(appID, now: EventLoop.preciseNanos()).map { $0 ? .refused : .unknown }
        }
    }

    /// A found record, without asking Nextcloud (the front-proxy hint).
    func known(_ appID: String) -> Bool { state.withLock { $0.records[appID] != nil } }

    /// `/exapp_storage` POST: AppAPI pushes a record (enable, update).
    func store(_ appID: String, _ entry: ExAppEntry) {
        state.withLock { state in
            state.records[appID] = entry
            state.unknown.remove(appID)
        }
    }

    /// `/exapp_storage` DELETE: false when there was no such record.
    func remove(_ appID: String) -> Bool {
        state.withLock { $0.records.removeValue(forKey: appID) != nil }
    }

    var all: [String: ExAppEntry] { state.withLock { $0.records } }
}

extension ExAppDirectory.Lookup {
    var isRefused: Bool {
        if case .refused = self { return true }
        return false
    }
}

/// A record with its upstream resolved once (a DNS name is looked up off the loop when the
/// record arrives, not per request).
struct ExAppEntry: Sendable {
    let record: ExAppRecord
    /// nil when the host could not be resolved (requests get 404, like HaRP).
    let upstream: Upstream?
    /// AppAPI's signature for an anonymous user, base64(":<token>"): made once, not per request.
    let anonymousAuthorization: String

    init(record: ExAppRecord, upstream: Upstream?) {
        self.record = record
        self.upstream = upstream
        anonymousAuthorization = Data(":\(record.token)".utf8).base64EncodedString()
    }

    /// Resolves `record.host`: an IP literal at once, a name on a thread of its own
    /// (getaddrinfo blocks), IPv4 preferred.
    static func resolving(_ record: ExAppRecord) async -> ExAppEntry {
        ExAppEntry(record: record, upstream: await HostResolver.upstream(host: record.host, port: record.port))
    }
}
