import HarpKernel

/// A group of listeners with its own route providers and response observers. The `[http]`
/// listeners are one site (the static route table and providers added with
/// `addRouteProvider`); the ExApps plugin adds its listeners as another, so a request on
/// port 8780 is decided by the ExApps rules alone, whatever routes `[http]` has. Timeouts,
/// limits, upstream pools and metrics are the http plugin's, shared by every site.
public final class ProxySite: @unchecked Sendable {
    // @unchecked Sendable: `providers` and `observers` are filled before the http plugin
    // starts (plugins' `init`) and only read once connections are served.
    public let name: String
    let listen: [SocketAddress]
    let certificates: ServerCertificates
    var providers: [any RouteProvider]
    var observers: [any ResponseObserver]
    /// Front proxies whose X-Forwarded-* headers this site keeps; nil: `[http] trusted_proxies`.
    /// (The ExApps site trusts what HaRP's `HP_TRUSTED_PROXY_IPS` names: the same list decides
    /// whose X-Forwarded-For names the client for bans, and whose headers reach the ExApp.)
    let trustedProxies: [IPRange]?
    /// The status when the upstream cannot be reached (refused, timed out); nil: 502, or 504
    /// for a timeout. The ExApps site answers 503, as HaRP's HAProxy did.
    let unreachableStatus: Int?

    /// `keyPrefix` names the configuration the TLS listeners came from, for errors.
    public init(name: String, listen: [SocketAddress], listenTLS: [TLSListenerConfiguration], keyPrefix: String,
                trustedProxies: [IPRange]? = nil, unreachableStatus: Int? = nil, providers: [any RouteProvider] = [],
                observers: [any ResponseObserver] = []) throws(ConfigError) {
        self.name = name
        self.listen = listen
        self.trustedProxies = trustedProxies
        self.unreachableStatus = unreachableStatus
        certificates = try ServerCertificates(listenTLS, keyPrefix: keyPrefix, alpn: ["http/1.1"])
        self.providers = providers
        self.observers = observers
    }

    var isEmpty: Bool { listen.isEmpty && certificates.listeners.isEmpty }

    /// The configuration keys of the site's listeners (`http.listen[0]`, `exapps.listen_tls[1].listen`).
    func listenKey(_ index: Int) -> String { "\(name).listen[\(index)]" }
    func listenTLSKey(_ index: Int) -> String { "\(name).listen_tls[\(index)].listen" }

    /// Providers in order; the first non-nil decision wins, and nil from all is a 404.
    func route(_ request: inout HTTPRequestHead, client: ClientInfo, exchange: Exchange) async -> RouteDecision? {
        for provider in providers {
            if let decision = await provider.route(&request, client: client, exchange: exchange) { return decision }
        }
        return nil
    }
}
