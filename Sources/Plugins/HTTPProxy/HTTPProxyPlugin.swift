import CoreMetrics
import Glibc
import HarpKernel
import Logging

/// `http`: an HTTP/1.1 reverse proxy. Other plugins add route providers and response
/// observers while they are built (before any plugin starts).
public final class HTTPProxyPlugin: Plugin {
    public static let name = "http"
    public static let summary = "HTTP/1.1 reverse proxy: strict parsing, keep-alive pools, zero-copy bodies"
    public static var defaultConfiguration: HTTPProxyConfiguration { HTTPProxyConfiguration() }

    let shared: ProxyShared
    let context: PluginContext
    private let listeners: ListenerSet
    private var sites: [ProxySite] { shared.sites }
    private var main: ProxySite { shared.sites[0] }

    public init(configuration: HTTPProxyConfiguration, context: PluginContext) throws {
        self.context = context
        shared = try ProxyShared(configuration: configuration, logger: context.logger)
        listeners = ListenerSet(loops: context.loops, logger: context.logger)
        // The static table answers first; providers added by other plugins come after it.
        shared.sites = [try ProxySite(name: "http", listen: configuration.listen, listenTLS: configuration.listenTLS, keyPrefix: "http.listen_tls",
                               providers: configuration.routes.isEmpty ? [] : [StaticRoutes(routes: configuration.routes)])]
    }

    /// Adds a route provider to the `[http]` listeners (call from another plugin's `init`).
    public func addRouteProvider(_ provider: any RouteProvider) {
        main.providers.append(provider)
    }

    /// Adds an observer of the `[http]` listeners' exchanges.
    public func addObserver(_ observer: any ResponseObserver) {
        main.observers.append(observer)
    }

    /// Adds listeners served by their own route providers (call from another plugin's
    /// `init`; they start with the http plugin).
    public func addSite(_ site: ProxySite) {
        shared.sites.append(site)
    }

    /// Adds a handler for one `Upgrade` protocol (call from another plugin's `init`).
    public func addUpgradeHandler(_ handler: any UpgradeHandler) {
        shared.upgradeHandlers.append(handler)
    }

    public func start() async throws {
        // `listen = []` is allowed when another plugin brings its own listeners (the ExApps
        // gateway alone); with none at all, the http plugin would serve nothing.
        guard sites.contains(where: { !$0.isEmpty }) else {
            throw ConfigError.invalid(key: "http.listen", value: "[]", reason: "expected at least one address (or an [[http.listen_tls]])")
        }
        shared.prepareLoops(context.loops)
        let shared = self.shared
        for site in sites {
            for (index, address) in site.listen.enumerated() {
                try listeners.listen(on: address, key: context.origins.describe(site.listenKey(index))) { socket in
                    await HTTPProxyPlugin.serve(socket, shared: shared, site: site) { $0 }
                }
            }
            for (index, listener) in site.certificates.listeners.enumerated() {
                try listeners.listen(on: listener.listen, key: context.origins.describe(site.listenTLSKey(index))) { socket in
                    await HTTPProxyPlugin.serve(socket, shared: shared, site: site) { socket in
                        await HTTPProxyPlugin.acceptTLS(socket, context: site.certificates.context(index), shared: shared)
                    }
                }
            }
        }
    }

    /// Every site's listeners (the ExApps site's too: it listens through this plugin).
    public var listenAddresses: [ConfiguredAddress] {
        sites.flatMap { site in
            site.listen.enumerated().map { ConfiguredAddress(key: site.listenKey($0.offset), address: $0.element) }
                + site.certificates.listeners.enumerated().map { ConfiguredAddress(key: site.listenTLSKey($0.offset), address: $0.element.listen) }
        }
    }

    /// One accepted socket: admitted under the connection limit (or closed at once), made a
    /// client stream by `secure` (nil: closed, e.g. a failed TLS handshake), then served.
    static func serve(_ socket: SocketStream, shared: ProxyShared, site: ProxySite,
                      secure: (SocketStream) async -> (any ByteStream)?) async {
        let roster = shared.roster(for: socket.loop)
        guard roster.admit() else {
            shared.metrics.connectionRefused()
            socket.abort()
            return
        }
        defer { roster.leave() }
        Socket.setNoDelay(socket.fd)
        guard let client = await secure(socket) else { return }
        await ProxyConnection(client: client, shared: shared, site: site).run()
    }

    /// The server side of a TLS handshake; a failure is logged with the peer and OpenSSL's
    /// reason, counted, closes the socket, and affects no other connection.
    static func acceptTLS(_ socket: SocketStream, context: TLSContext, shared: ProxyShared) async -> TLSStream? {
        do {
            let stream = try TLSStream(transport: socket, context: context, isServer: true)
            try await stream.handshake(timeout: shared.configuration.clientTimeout.duration)
            shared.tlsHandshakes[stream.sessionReused ? 1 : 0].increment()
            return stream
        } catch {
            shared.tlsHandshakeFailures.increment()
            shared.logger.info("TLS handshake failed", metadata: [
                "client": "\(socket.peer.map { "\($0)" } ?? "?")", "error": "\(error)"])
            socket.abort()
            return nil
        }
    }

    /// SIGHUP: every site re-reads its HTTPS certificates. New connections get the new ones;
    /// open connections keep theirs. A file that fails keeps the old context and is logged.
    public func reload() async {
        for site in sites { site.certificates.reload(logger: shared.logger) }
    }

    public func stopAccepting() async {
        shared.stopAccepting()
        await listeners.stop()
    }

    /// Where the listeners are bound, site by site (plain ones first in each), once started.
    public var boundAddresses: [SocketAddress] { listeners.boundAddresses }

    public var endpoints: [String] {
        let routes = shared.configuration.routes.map { route in
            "route \(route.host ?? "*")\(route.pathPrefix) -> \(route.upstream)"
        }
        // Bound in the order `start` listens: site by site, plain before TLS.
        let schemes = sites.flatMap { site in
            let suffix = site.name == "http" ? "" : " (\(site.name))"
            return site.listen.map { _ in ("http", suffix) } + site.certificates.listeners.map { _ in ("https", suffix) }
        }
        return zip(schemes, listeners.boundAddresses).map { scheme, address in "\(scheme.0)://\(address)\(scheme.1)" } + routes
    }
}
