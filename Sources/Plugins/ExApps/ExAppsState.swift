import FRP
import Foundation
import HTTPProxy
import HarpKernel
import Logging
import Synchronization

/// What every ExApps request and frp login shares, on any loop: the key, the caches, the
/// bans and the Nextcloud client. Each piece guards itself (mutexes, atomics); the rest is
/// fixed at init.
final class ExAppsState: Sendable {
    let configuration: ExAppsConfiguration
    let sharedKey: String
    let metrics = ExAppsMetrics()
    let bans: BanList
    let directory: ExAppDirectory
    let sessions: SessionCache
    let nextcloud: NextcloudClient
    let logger: Logger
    let refusedKeys: RefusedKeys
    /// The frp plugin, for tunnel status (the Docker passthrough, `harp exapps check`).
    let frp: FRPPlugin?
    /// The `/docker/exapp/*` actions (nil in tests that build the state without loops).
    let docker: DockerActions?
    private let hinted = Mutex<Set<String>>([])
    private let warnedUntrustedForwarding = Atomic(false)
    /// Built after `self` (it reads the state back).
    var control: ControlPlane { ControlPlane(state: self) }

    init(configuration: ExAppsConfiguration, sharedKey: String, nextcloud: (ExAppsMetrics) -> NextcloudClient, frp: FRPPlugin?,
         docker: DockerActions?, logger: Logger) {
        self.configuration = configuration
        self.sharedKey = sharedKey
        bans = BanList(count: configuration.banCount, window: configuration.banWindow.duration, metrics: metrics, logger: logger)
        directory = ExAppDirectory(unknownTTL: configuration.unknownAppTTL.duration, metrics: metrics)
        sessions = SessionCache(lifetime: configuration.sessionLifetime.duration, metrics: metrics)
        self.nextcloud = nextcloud(metrics)
        refusedKeys = RefusedKeys(logger: logger)
        self.frp = frp
        self.docker = docker
        self.logger = logger
    }

    /// The client's IP: the peer's, or — when the peer is a trusted front proxy — the
    /// `X-Forwarded-For` entry `client_address` picks, else `X-Real-IP` (`ClientAddressRule`).
    func clientIP(_ client: ClientInfo, headers: HTTPHeaders) -> String {
        if !client.isTrustedProxy, headers["x-forwarded-for"] != nil, !warnedUntrustedForwarding.exchange(true, ordering: .relaxed) {
            logger.warning("""
                X-Forwarded-For came from \(client.address), which is not a trusted proxy: it is ignored, and bans and the \
                ExApps see \(client.address) as the client. If a front proxy runs there, list it in HP_TRUSTED_PROXY_IPS \
                (exapps.trusted_proxies); logged once
                """)
        }
        return configuration.clientAddress.client(client, headers: headers, trusted: configuration.trustedProxies)
    }

    /// A path whose first segment is a known app id, without `/exapps/`: the front proxy
    /// most likely strips the prefix (HaRP's issues #38, #42, #57, #63). A 404 that says so
    /// and how to fix it, logged once per app; no failure is counted (the client did nothing
    /// wrong, and banning a misconfigured front proxy would take every app down).
    func frontProxyHint(for path: Substring) -> RouteDecision? {
        let segment = path.drop { $0 == "/" }.prefix { $0 != "/" }.lowercased()
        guard !segment.isEmpty, segment != "exapps", directory.known(segment) else { return nil }
        if hinted.withLock({ $0.insert(segment).inserted }) {
            logger.warning("a request for an ExApp arrived without /exapps/: the front proxy strips the prefix (see the 404 body)",
                           metadata: ["app": "\(segment)", "path": "\(path)"])
        }
        return .respond(status: 404, body: FrontProxyHint.body(appID: segment))
    }
}

/// The body of the front-proxy 404: what is wrong and one line per common proxy.
enum FrontProxyHint {
    static func body(appID: String) -> String {
        """
        404 Not Found

        This path starts with the ExApp id "\(appID)" but not with /exapps/: the reverse proxy in front \
        of harp most likely removes the /exapps/ prefix. harp needs the whole path, /exapps/\(appID)/...
        Pass it through unchanged:
          nginx:   location /exapps/ { proxy_pass http://harp:8780; }   (no URI or trailing slash after the port)
          Caddy:   handle /exapps/* { reverse_proxy harp:8780 }   (handle, not handle_path)
          Traefik: rule PathPrefix(`/exapps/`) with no StripPrefix middleware on the router
          Apache:  ProxyPass /exapps/ http://harp:8780/exapps/

        """
    }
}
