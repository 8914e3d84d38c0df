import CoreMetrics
import HarpKernel
import Logging
import Synchronization

/// State every connection of the http plugin reads: configuration, parser limits, per-loop
/// upstream pools, metrics and upgrade handlers (route providers and observers belong to a
/// `ProxySite`). Immutable once serving starts, except the pools, each touched only by its
/// own loop.
final class ProxyShared: @unchecked Sendable {
    // @unchecked Sendable: `pools[i]` and `rosters[i]` are used only on loop i's thread;
    // `sites` and `upgradeHandlers` are fixed before the first connection is accepted (plugins'
    // `init`); the flag is atomic.
    let configuration: HTTPProxyConfiguration
    let parser: HTTPHeadParser
    let logger: Logger
    let accessLogger: Logger
    let metrics = HTTPMetrics()
    var upgradeHandlers: [any UpgradeHandler] = []
    /// The `[http]` listeners first, then those other plugins added.
    var sites: [ProxySite] = []
    private var pools: [UpstreamPool] = []
    /// Client contexts for the https upstreams routes name, and one (system trust store) for
    /// https upstreams other providers return. All are built in `init`: a failure stops
    /// startup, so no request can reach an https upstream without TLS.
    private let upstreamContexts: [Upstream: TLSContext]
    private let defaultUpstreamTLS: TLSContext
    /// How upstream connections are opened (connect timeout, no-delay, TLS without fallback).
    let dialer: Dialer
    let tlsHandshakeFailures = CoreMetrics.Counter(label: "harp_http_tls_handshake_failures_total")
    /// Handshakes by kind: a resumed session (ticket or cache) skips the certificate signature.
    let tlsHandshakes = ["full", "resumed"].map { CoreMetrics.Counter(label: "harp_http_tls_handshakes_total", dimensions: [("kind", $0)]) }
    private let accepting = Atomic<Bool>(true)

    init(configuration: HTTPProxyConfiguration, logger: Logger) throws {
        self.configuration = configuration
        parser = HTTPHeadParser(maxHeadBytes: configuration.maxHeaderSize, maxTargetBytes: configuration.maxTargetSize)
        self.logger = logger
        var access = Logger(label: "harp.http.access")
        access.logLevel = logger.logLevel
        accessLogger = access
        upstreamContexts = try Self.upstreamContexts(configuration.routes, logger: logger)
        do {
            defaultUpstreamTLS = try TLSContext.client()
        } catch {
            throw ConfigError.invalid(key: "http", value: "https upstreams", reason: "cannot set up TLS with the system trust store: \(error)")
        }
        dialer = Dialer(connectTimeout: configuration.connectTimeout.duration)
    }

    /// One client context per https upstream. Two routes to one upstream with different TLS
    /// settings are refused: their connections share a pool, so one would silently get the
    /// other's verification.
    private static func upstreamContexts(_ routes: [HTTPProxyConfiguration.Route], logger: Logger) throws(ConfigError) -> [Upstream: TLSContext] {
        var contexts: [Upstream: TLSContext] = [:]
        var settings: [Upstream: (index: Int, ca: String?, verify: Bool)] = [:]
        for (index, route) in routes.enumerated() where route.upstream.isTLS {
            if let earlier = settings[route.upstream] {
                guard earlier.ca == route.ca && earlier.verify == route.verify else {
                    throw .invalid(key: "http.routes[\(index)]", value: "\"\(route.upstream)\"",
                                   reason: "http.routes[\(earlier.index)] names the same upstream with other ca/verify settings; give both routes the same ones")
                }
                continue
            }
            settings[route.upstream] = (index, route.ca, route.verify)
            do {
                contexts[route.upstream] = try TLSContext.client(ca: route.ca, verify: route.verify)
            } catch {
                throw .invalid(key: "http.routes[\(index)].ca", value: "\"\(route.ca ?? "")\"", reason: "\(error)")
            }
            if !route.verify {
                logger.warning("TLS verification is off for an upstream", metadata: ["upstream": "\(route.upstream)"])
            }
        }
        return contexts
    }

    /// The TLS context for an https upstream; nil only for plain ones.
    func upstreamTLS(for upstream: Upstream) -> TLSContext? {
        guard upstream.isTLS else { return nil }
        return upstreamContexts[upstream] ?? defaultUpstreamTLS
    }

    private var rosters: [ConnectionRoster] = []

    /// Per-loop state: upstream pools and client rosters (the connection limit is split
    /// evenly across the loops, since a connection never changes loops).
    func prepareLoops(_ loops: [EventLoop]) {
        pools = loops.map { loop in
            UpstreamPool(loop: loop, maxPerUpstream: configuration.upstreamKeepalive, idleTimeout: configuration.upstreamIdleTimeout.duration)
        }
        let perLoop = (configuration.maxConnections + loops.count - 1) / max(1, loops.count)
        rosters = loops.map { _ in ConnectionRoster(limit: perLoop) }
    }

    func pool(for loop: EventLoop) -> UpstreamPool { pools[loop.index] }
    func roster(for loop: EventLoop) -> ConnectionRoster { rosters[loop.index] }


    /// During shutdown, responses say `Connection: close` so clients go elsewhere.
    var acceptingNewRequests: Bool { accepting.load(ordering: .relaxed) }
    func stopAccepting() { accepting.store(false, ordering: .relaxed) }

    /// The handler for the protocol a request asks to switch to, if one is registered.
    func upgradeHandler(for request: HTTPRequestHead) -> (any UpgradeHandler)? {
        guard !upgradeHandlers.isEmpty, request.headers[.upgrade] != nil else { return nil }
        return upgradeHandlers.first { handler in request.headers.contains(.upgrade, token: handler.protocolName) }
    }

    func record(_ exchange: Exchange, client: ClientInfo, site: ProxySite) {
        metrics.record(exchange)
        if configuration.accessLog {
            // The query stays out unless asked: it often carries tokens and personal data.
            let path = configuration.accessLogQuery ? exchange.target : String(exchange.target.prefix { $0 != "?" })
            var fields: Logger.Metadata = [
                "client": "\(exchange.client ?? client.address)", "method": "\(exchange.method)", "path": "\(path)",
                "status": "\(exchange.status)", "bytes_in": "\(exchange.requestBytes)", "bytes_out": "\(exchange.responseBytes)",
                "upstream": "\(exchange.upstream?.text ?? "-")",
                "duration_ms": "\(Double(Int(exchange.durationSeconds * 100_000)) / 100)",
            ]
            if exchange.client != nil { fields["proxy"] = "\(client.address)" }
            if let app = exchange.app { fields["app"] = "\(app)" }
            if let user = exchange.user { fields["user"] = "\(user)" }
            if let reason = exchange.reason { fields["reason"] = "\(reason)" }
            accessLogger.info("request", metadata: fields)
        }
        for observer in site.observers { observer.observe(exchange, client: client) }
    }
}
