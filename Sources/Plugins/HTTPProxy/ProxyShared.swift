import CoreMetrics
import HarpKernel
import Logging
import Synchronization

/// State every connection of the http plugin reads: configuration, parser limits, the route
/// providers, per-loop upstream pools, metrics and observers. Immutable once serving starts,
/// except the pools, each touched only by its own loop.
final class ProxyShared: @unchecked Sendable {
    // @unchecked Sendable: `pools[i]` is used only on loop i's thread; `providers` and
    // `observers` are fixed before the first connection is accepted; the flag is atomic.
    let configuration: HTTPProxyConfiguration
    let parser: HTTPHeadParser
    let logger: Logger
    let accessLogger: Logger
    let metrics = HTTPMetrics()
    var providers: [any RouteProvider] = []
    var observers: [any ResponseObserver] = []
    var upgradeHandlers: [any UpgradeHandler] = []
    private var pools: [UpstreamPool] = []
    /// Client contexts for https upstreams named by routes; others get `defaultUpstreamTLS`.
    private var upstreamContexts: [Upstream: TLSContext] = [:]
    private var defaultUpstreamTLS: TLSContext?
    /// Server contexts of the HTTPS listeners, replaced on reload (SIGHUP).
    private let serverContexts = Mutex<[TLSContext]>([])
    let tlsHandshakeFailures = CoreMetrics.Counter(label: "harp_http_tls_handshake_failures_total")
    private let accepting = Atomic<Bool>(true)

    init(configuration: HTTPProxyConfiguration, logger: Logger) {
        self.configuration = configuration
        parser = HTTPHeadParser(maxHeadBytes: configuration.maxHeaderSize, maxTargetBytes: configuration.maxTargetSize)
        self.logger = logger
        var access = Logger(label: "harp.http.access")
        access.logLevel = logger.logLevel
        accessLogger = access
    }

    /// Builds every TLS context the configuration names; a bad file is a startup error.
    func prepareTLS() throws {
        for (index, route) in configuration.routes.enumerated() where route.upstream.isTLS {
            do {
                upstreamContexts[route.upstream] = try TLSContext.client(ca: route.ca, verify: route.verify)
            } catch {
                throw ConfigError.invalid(key: "http.routes[\(index)].ca", value: "\"\(route.ca ?? "")\"", reason: "\(error)")
            }
            if !route.verify {
                logger.warning("TLS verification is off for an upstream", metadata: ["upstream": "\(route.upstream)"])
            }
        }
        serverContexts.withLock { $0 = [] }
        let contexts = try configuration.listenTLS.enumerated().map { index, listener in
            do {
                return try Self.serverContext(listener)
            } catch {
                throw ConfigError.invalid(key: "http.listen_tls[\(index)]", value: "\"\(listener.cert)\"", reason: "\(error)")
            }
        }
        serverContexts.withLock { $0 = contexts }
    }

    static func serverContext(_ listener: HTTPProxyConfiguration.TLSListener) throws(TLSError) -> TLSContext {
        let context = try TLSContext.server(certificate: listener.cert, key: listener.key, clientCA: listener.clientCA,
                                            versions: listener.protocols)
        for named in listener.sni {
            context.add(serverName: named.name, try TLSContext.server(certificate: named.cert, key: named.key, clientCA: listener.clientCA,
                                                                      versions: listener.protocols))
        }
        return context
    }

    /// SIGHUP: re-read the HTTPS certificates. New connections get the new ones; open
    /// connections keep theirs. A file that fails keeps the old context and is logged.
    func reloadCertificates() {
        for (index, listener) in configuration.listenTLS.enumerated() {
            do {
                let context = try Self.serverContext(listener)
                serverContexts.withLock { contexts in
                    context.adoptTicketKeys(from: contexts[index])  // tickets from before still resume
                    contexts[index] = context
                }
                logger.info("reloaded TLS certificate", metadata: ["listen": "\(listener.listen)", "cert": "\(listener.cert)"])
            } catch {
                logger.error("TLS certificate reload failed; keeping the old one", metadata: ["cert": "\(listener.cert)", "error": "\(error)"])
            }
        }
    }

    func serverContext(_ index: Int) -> TLSContext { serverContexts.withLock { $0[index] } }

    func upstreamTLS(for upstream: Upstream) -> TLSContext? {
        guard upstream.isTLS else { return nil }
        if let context = upstreamContexts[upstream] { return context }
        if defaultUpstreamTLS == nil { defaultUpstreamTLS = try? TLSContext.client() }
        return defaultUpstreamTLS
    }

    func preparePools(loops: Int) {
        pools = (0..<loops).map { _ in
            UpstreamPool(maxPerUpstream: configuration.upstreamKeepalive, idleTimeout: configuration.upstreamIdleTimeout.duration)
        }
    }

    func pool(for loop: EventLoop) -> UpstreamPool { pools[loop.index] }


    /// During shutdown, responses say `Connection: close` so clients go elsewhere.
    var acceptingNewRequests: Bool { accepting.load(ordering: .relaxed) }
    func stopAccepting() { accepting.store(false, ordering: .relaxed) }

    func route(_ request: inout HTTPRequestHead, client: ClientInfo) async -> RouteDecision? {
        for provider in providers {
            if let decision = await provider.route(&request, client: client) { return decision }
        }
        return nil
    }

    /// The handler for the protocol a request asks to switch to, if one is registered.
    func upgradeHandler(for request: HTTPRequestHead) -> (any UpgradeHandler)? {
        guard !upgradeHandlers.isEmpty, request.headers[.upgrade] != nil else { return nil }
        return upgradeHandlers.first { handler in request.headers.contains(.upgrade, token: handler.protocolName) }
    }

    func record(_ exchange: Exchange, client: ClientInfo) {
        metrics.record(exchange)
        if configuration.accessLog {
            accessLogger.info("request", metadata: [
                "client": "\(client.address)", "method": "\(exchange.method)", "path": "\(exchange.target)",
                "status": "\(exchange.status)", "bytes_in": "\(exchange.requestBytes)", "bytes_out": "\(exchange.responseBytes)",
                "upstream": "\(exchange.upstream?.text ?? "-")",
                "duration_ms": "\(Double(Int(exchange.durationSeconds * 100_000)) / 100)",
            ])
        }
        for observer in observers { observer.observe(exchange, client: client) }
    }
}
