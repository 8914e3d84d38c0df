import Foundation
import HTTPProxy
import HarpKernel
import Logging
import Synchronization

/// AppAPI's two endpoints for the gateway, called with `harp-shared-key` over the kernel's
/// `HTTPClient` (pooled, on the caller's loop, never blocking it): `exapp-meta` (an app's
/// record) and `user-info` (who a request's session belongs to).
final class NextcloudClient: Sendable {
    let url: NextcloudURL
    private let client: HTTPClient
    private let sharedKey: String
    private let metrics: ExAppsMetrics
    private let logger: Logger
    /// Outages and key refusals, logged once each.
    let health: NextcloudHealth
    /// Nextcloud's address and until when it is believed (monotonic ns); looked up again after
    /// `addressLifetime`, so a Nextcloud container that moves is followed.
    private let resolved = Mutex<(upstream: Upstream, until: UInt64)?>(nil)
    private let lookups = SingleFlight<Int, Upstream?>()
    /// Nextcloud calls in flight at once (distinct apps and sessions; the same one is
    /// coalesced before it gets here). More wait their turn, within their own timeout.
    private let calls = AsyncLimit(64)
    static let addressLifetime: UInt64 = 60_000_000_000

    init(url: NextcloudURL, client: HTTPClient, sharedKey: String, metrics: ExAppsMetrics, logger: Logger) {
        self.url = url
        self.client = client
        self.sharedKey = sharedKey
        self.metrics = metrics
        self.logger = logger
        health = NextcloudHealth(logger: logger)
    }

    /// Where Nextcloud is now: an IP literal at once, a name from the cache or looked up off
    /// the loop (a failed lookup keeps the last address, if any).
    private func upstream() async -> Upstream? {
        let now = EventLoop.preciseNanos()
        let cached = resolved.withLock { $0 }
        if let cached, cached.until > now { return cached.upstream }
        return await lookups.run(0) {
            if let fresh = resolved.withLock({ $0 }), fresh.until > EventLoop.preciseNanos() { return fresh.upstream }
            guard let address = await HostResolver.address(host: url.hostName, port: url.port) else {
                health.failed(.unreachable, "cannot resolve Nextcloud's host name", metadata: ["host": "\(url.hostName)"])
                return cached?.upstream
            }
            let upstream = Upstream(address: address, tls: url.isTLS, host: url.hostName, port: url.port)
            resolved.withLock { $0 = (upstream, EventLoop.preciseNanos() + Self.addressLifetime) }
            return upstream
        }
    }

    /// One call to `endpoint`, timed and counted; nil (logged) when Nextcloud cannot be
    /// reached: its name does not resolve, the connection fails, or no answer comes in time.
    private func call(_ endpoint: String, appID: String, headers: [(String, String)], on loop: EventLoop) async -> HTTPClientResponse? {
        let started = EventLoop.preciseNanos()
        guard let upstream = await upstream() else {
            metrics.nextcloudCall(endpoint, outcome: "unresolved", nanoseconds: EventLoop.preciseNanos() - started)
            return nil
        }
        // The wait for a slot counts against the call's limit; the call gets what is left.
        let limit = client.responseTimeout
        let queued = EventLoop.preciseNanos()
        let result = await calls.run(on: loop, timeout: limit) { () async -> Result<HTTPClientResponse, HTTPClientError> in
            let waited = Duration.nanoseconds(Int64(EventLoop.preciseNanos() - queued))
            let left = max(limit - waited, .milliseconds(1))
            do throws(HTTPClientError) {
                return .success(try await client.request("GET", upstream, target: url.target(endpoint, appID: appID), headers: headers,
                                                         timeout: left, on: loop))
            } catch {
                return .failure(error)
            }
        } ?? .failure(.timedOut)
        do {
            let response = try result.get()
            metrics.nextcloudCall(endpoint, outcome: "\(response.status)", nanoseconds: EventLoop.preciseNanos() - started)
            return response
        } catch {
            metrics.nextcloudCall(endpoint, outcome: "error", nanoseconds: EventLoop.preciseNanos() - started)
            health.failed(.unreachable, "Nextcloud cannot be reached: ExApps get 503 until it answers",
                          metadata: ["endpoint": "\(endpoint)", "app": "\(appID)", "error": "\(error)", "nextcloud": "\(url.isTLS ? "https" : "http")://\(url.host)"])
            return nil
        }
    }

    /// `exapp-meta`: 200 → the record (its host resolved), 404 → unknown, 401/403 → refused
    /// (harp's key, or an app recent AppAPI versions will not name), anything else (5xx, a
    /// broken body, Nextcloud unreachable) → failed.
    func record(_ appID: String, on loop: EventLoop) async -> ExAppDirectory.Lookup {
        guard let response = await call("exapp-meta", appID: appID, headers: [("Host", url.host), ("harp-shared-key", sharedKey)],
                                         on: loop) else { return .failed }
        switch response.status {
        case 200:
            health.answered(acceptedKey: true)
            switch ExAppRecord.decode(response.body) {
            case .success(let record):
                record.logUnusableRoutes(appID: appID, logger: logger)
                return .found(await ExAppEntry.resolving(record))
            case .failure(let problem):
                logger.warning("Nextcloud sent an invalid ExApp record", metadata: ["app": "\(appID)", "problem": "\(problem)"])
                return .failed
            }
        case 404:
            health.answered()
            return .unknown
        case 401, 403:
            // Nextcloud has accepted harp's key before: a 401 is AppAPI's answer for an app it
            // does not know (recent versions hide which apps exist), and counts as HaRP counts it.
            if health.keyAccepted { return .unknown }
            health.failed(.refusedKey, """
                Nextcloud refused harp's key: HP_SHARED_KEY (exapps.shared_key) must equal the deploy daemon's "HaRP shared key" \
                in Nextcloud. Until Nextcloud has accepted the key once, its 401 counts toward no ban (recent AppAPI versions \
                answer 401 for an app they do not know, too); requests get 404
                """, metadata: ["app": "\(appID)", "status": "\(response.status)"])
            return .refused
        default:
            health.failed(.failing, "Nextcloud's exapp-meta fails: ExApps get 503", metadata: ["app": "\(appID)", "status": "\(response.status)"])
            return .failed
        }
    }

    /// `user-info` with the client's own headers (its cookies or Authorization say who it is),
    /// except those that describe the client's connection or body.
    func user(appID: String, clientHeaders: HTTPHeaders, on loop: EventLoop) async -> SessionCache.Answer {
        var headers: [(String, String)] = [("Host", url.host)]
        for (name, value) in clientHeaders.pairs where !Self.notForwarded.contains(name.lowercased()) {
            headers.append((name, value))
        }
        headers.append(("harp-shared-key", sharedKey))
        guard let response = await call("user-info", appID: appID, headers: headers, on: loop) else { return .failed }
        switch response.status {
        case 200:
            guard let object = (try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any],
                  let level = AccessLevel(rawValue: ExAppRecord.integer(object["access_level"] ?? 0) ?? -1) else {
                health.failed(.failing, "Nextcloud's user-info answer cannot be read: users get 401", metadata: ["app": "\(appID)"])
                return .failed
            }
            health.answered()
            return .user(NextcloudUser(id: object["user_id"] as? String ?? "", level: level))
        case 400..<500:
            health.answered()
            return .anonymous
        default:
            health.failed(.failing, "Nextcloud's user-info fails: users get 401", metadata: ["app": "\(appID)", "status": "\(response.status)"])
            return .failed
        }
    }

    /// HaRP drops Host and Content-Length; harp also drops the hop-by-hop fields and the
    /// body's framing (the call is a GET without a body) and the client's own copy of the key.
    static let notForwarded: Set<String> = [
        "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "expect", "te", "trailer",
        "proxy-connection", "harp-shared-key",
    ]
}
