import CoreMetrics
import Glibc
import HarpKernel
import Logging
import Synchronization

/// `http`: an HTTP/1.1 reverse proxy. Other plugins add route providers and response
/// observers while they are built (before any plugin starts).
public final class HTTPProxyPlugin: Plugin {
    public static let name = "http"
    public static let summary = "HTTP/1.1 reverse proxy: strict parsing, keep-alive pools, zero-copy bodies"
    public static var defaultConfiguration: HTTPProxyConfiguration { HTTPProxyConfiguration() }

    let shared: ProxyShared
    let context: PluginContext
    private let listeners = Mutex<[ListenerGroup]>([])

    public init(configuration: HTTPProxyConfiguration, context: PluginContext) throws {
        self.context = context
        shared = ProxyShared(configuration: configuration, logger: context.logger)
        // The static table answers first; providers added by other plugins come after it.
        if !configuration.routes.isEmpty { shared.providers.append(StaticRoutes(routes: configuration.routes)) }
        try shared.prepareTLS()
    }

    /// Adds a route provider (call from another plugin's `init`).
    public func addRouteProvider(_ provider: any RouteProvider) {
        shared.providers.append(provider)
    }

    public func addObserver(_ observer: any ResponseObserver) {
        shared.observers.append(observer)
    }

    /// Adds a handler for one `Upgrade` protocol (call from another plugin's `init`).
    public func addUpgradeHandler(_ handler: any UpgradeHandler) {
        shared.upgradeHandlers.append(handler)
    }

    public func start() async throws {
        shared.preparePools(loops: context.loops.count)
        let shared = self.shared
        for address in shared.configuration.listen {
            try listen(on: address) { fd, loop in SocketStream(loop: loop, fd: fd) }
        }
        for (index, listener) in shared.configuration.listenTLS.enumerated() {
            try listen(on: listener.listen) { fd, loop in
                await HTTPProxyPlugin.acceptTLS(fd, loop: loop, context: shared.serverContext(index), shared: shared)
            }
        }
    }

    /// Serves one listen address: each accepted socket becomes a client stream (nil: the
    /// connection is closed, e.g. a failed TLS handshake) and then a `ProxyConnection`.
    private func listen(on address: SocketAddress,
                        stream: @escaping @Sendable (Int32, EventLoop) async -> (any ByteStream)?) throws {
        let shared = self.shared
        let group = try ListenerGroup(address: address, loops: context.loops, logger: context.logger) { fd, loop in
            loop.serveConnection {
                Socket.setNoDelay(fd)
                guard let client = await stream(fd, loop) else {
                    close(fd)
                    return
                }
                await ProxyConnection(loop: loop, client: client, shared: shared).run()
            }
        }
        listeners.withLock { $0.append(group) }
    }

    /// The server side of a TLS handshake; a failure is logged with the peer and OpenSSL's
    /// reason, counted, and affects no other connection.
    static func acceptTLS(_ fd: Int32, loop: EventLoop, context: TLSContext, shared: ProxyShared) async -> TLSStream? {
        do {
            let stream = try TLSStream(loop: loop, fd: fd, context: context, isServer: true)
            try await stream.handshake(timeout: shared.configuration.clientTimeout.duration)
            return stream
        } catch {
            shared.tlsHandshakeFailures.increment()
            shared.logger.info("TLS handshake failed", metadata: [
                "client": "\(SocketAddress.peer(of: fd).map { "\($0)" } ?? "?")", "error": "\(error)"])
            return nil
        }
    }

    public func reload() async {
        shared.reloadCertificates()
    }

    public func stopAccepting() async {
        shared.stopAccepting()
        for group in listeners.withLock({ $0 }) { await group.stop() }
    }

    public var endpoints: [String] {
        let routes = shared.configuration.routes.map { route in
            "route \(route.host ?? "*")\(route.pathPrefix) -> \(route.upstream)"
        }
        let plain = shared.configuration.listen.count
        return listeners.withLock { groups in
            groups.enumerated().map { index, group in "\(index < plain ? "http" : "https")://\(group.boundAddress)" }
        } + routes
    }
}
