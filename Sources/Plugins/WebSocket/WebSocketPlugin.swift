import CoreMetrics
import HTTPProxy
import HarpKernel

/// `websocket`: validates WebSocket handshakes on every http route, relays upgraded
/// connections with splice (idle limit: http's tunnel_timeout; half-closed limit:
/// client_fin_timeout), or frame by frame with checks on `[[websocket.inspect]]` routes.
public final class WebSocketPlugin: Plugin {
    public static let name = "websocket"
    public static let summary = "WebSocket upgrades: handshake checks, spliced or inspected tunnels"
    public static let dependencies = ["http"]
    public static var defaultConfiguration: WebSocketConfiguration { WebSocketConfiguration() }

    let handler: WebSocketUpgrades

    public init(configuration: WebSocketConfiguration, context: PluginContext) throws {
        handler = WebSocketUpgrades(settings: configuration)
        // Without loops (config check) there is nothing to register with.
        context.dependency(HTTPProxyPlugin.self)?.addUpgradeHandler(handler)
    }

    public func start() async throws {}
}

/// The http plugin's handler for `Upgrade: websocket`.
struct WebSocketUpgrades: UpgradeHandler {
    let settings: WebSocketConfiguration
    let protocolName = "websocket"
    let upgrades = ["accepted", "refused", "declined"].map { Counter(label: "harp_websocket_upgrades_total", dimensions: [("result", $0)]) }
    let open = Meter(label: "harp_websocket_open_tunnels")
    let bytesToUpstream = Counter(label: "harp_websocket_bytes_total", dimensions: [("direction", "to_upstream")])
    let bytesToClient = Counter(label: "harp_websocket_bytes_total", dimensions: [("direction", "to_client")])
    let violations = Counter(label: "harp_websocket_protocol_closes_total")

    func check(_ request: HTTPRequestHead) -> UpgradeRefusal? {
        Handshake.check(request)
    }

    func upgradeEnded(refused: Bool) {
        upgrades[refused ? 1 : 2].increment()
    }

    func tunnel(_ connection: UpgradedConnection) async -> RelayResult {
        upgrades[0].increment()
        open.increment()
        defer { open.decrement() }
        // Counted as they move: a WebSocket may stay open for days.
        let (toUpstream, toClient) = (bytesToUpstream, bytesToClient)
        let meter: RelayMeter = { side, bytes in (side == 0 ? toUpstream : toClient).increment(by: bytes) }
        let result: RelayResult
        if inspects(connection.request) {
            result = await InspectingTunnel(connection, settings: settings, meter: meter).run()
            if case .failed = result.outcome { violations.increment() }
        } else {
            result = await connection.loop.relay(connection.client, connection.upstream, idleTimeout: connection.idleTimeout,
                                                 halfClosedTimeout: settings.clientFinTimeout.duration, meter: meter)
        }
        return result
    }

    func inspects(_ request: HTTPRequestHead) -> Bool {
        let host = request.hostWithoutPort
        return settings.inspect.contains { route in
            (route.host == nil || route.host == host) && request.path.hasPrefix(route.pathPrefix)
        }
    }
}
