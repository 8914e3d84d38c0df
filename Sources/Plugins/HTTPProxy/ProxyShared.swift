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
    private let accepting = Atomic<Bool>(true)

    init(configuration: HTTPProxyConfiguration, logger: Logger) {
        self.configuration = configuration
        parser = HTTPHeadParser(maxHeadBytes: configuration.maxHeaderSize, maxTargetBytes: configuration.maxTargetSize)
        self.logger = logger
        var access = Logger(label: "harp.http.access")
        access.logLevel = logger.logLevel
        accessLogger = access
    }

    func preparePools(loops: Int) {
        pools = (0..<loops).map { _ in
            UpstreamPool(maxPerUpstream: configuration.upstreamKeepalive, idleTimeout: configuration.upstreamIdleTimeout.duration)
        }
    }

    func pool(for loop: EventLoop) -> UpstreamPool { pools[loop.index] }

    /// Upstream connections opened so far, over all loops (tests read keep-alive reuse here).
    var upstreamConnectionsOpened: Int { pools.reduce(0) { $0 + $1.opened } }

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
        guard !upgradeHandlers.isEmpty, request.headers["Upgrade"] != nil else { return nil }
        return upgradeHandlers.first { handler in request.headers.contains("Upgrade", token: handler.protocolName) }
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
