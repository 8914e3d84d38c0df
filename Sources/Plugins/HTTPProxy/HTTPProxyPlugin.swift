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

    public init(configuration: HTTPProxyConfiguration, context: PluginContext) throws {
        self.context = context
        shared = try ProxyShared(configuration: configuration, logger: context.logger)
        listeners = ListenerSet(loops: context.loops, logger: context.logger)
        // The static table answers first; providers added by other plugins come after it.
        if !configuration.routes.isEmpty { shared.providers.append(StaticRoutes(routes: configuration.routes)) }
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
        shared.prepareLoops(context.loops)
        let shared = self.shared
        for address in shared.configuration.listen {
            try listeners.listen(on: address) { socket in
                await HTTPProxyPlugin.serve(socket, shared: shared) { $0 }
            }
        }
        for (index, listener) in shared.configuration.listenTLS.enumerated() {
            try listeners.listen(on: listener.listen) { socket in
                await HTTPProxyPlugin.serve(socket, shared: shared) { socket in
                    await HTTPProxyPlugin.acceptTLS(socket, context: shared.certificates.context(index), shared: shared)
                }
            }
        }
    }

    /// One accepted socket: admitted under the connection limit (or closed at once), made a
    /// client stream by `secure` (nil: closed, e.g. a failed TLS handshake), then served.
    static func serve(_ socket: SocketStream, shared: ProxyShared, secure: (SocketStream) async -> (any ByteStream)?) async {
        let roster = shared.roster(for: socket.loop)
        guard roster.admit() else {
            shared.metrics.connectionRefused()
            socket.abort()
            return
        }
        defer { roster.leave() }
        Socket.setNoDelay(socket.fd)
        guard let client = await secure(socket) else { return }
        await ProxyConnection(client: client, shared: shared).run()
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

    public func reload() async {
        shared.reloadCertificates()
    }

    public func stopAccepting() async {
        shared.stopAccepting()
        await listeners.stop()
    }

    /// Where the listeners are bound (plain ones first), once started.
    public var boundAddresses: [SocketAddress] { listeners.boundAddresses }

    public var endpoints: [String] {
        let routes = shared.configuration.routes.map { route in
            "route \(route.host ?? "*")\(route.pathPrefix) -> \(route.upstream)"
        }
        let plain = shared.configuration.listen.count
        return listeners.boundAddresses.enumerated().map { index, address in "\(index < plain ? "http" : "https")://\(address)" }
            + routes
    }
}
