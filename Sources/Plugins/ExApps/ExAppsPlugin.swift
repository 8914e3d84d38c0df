import ArgumentParser
import FRP
import HTTPProxy
import HarpKernel
import Logging

/// `exapps`: Nextcloud's AppAPI gateway — a drop-in replacement for HaRP. Its listeners are a
/// site of the http plugin decided by HaRP's rules (`ExAppsGateway`); ExApps publish
/// themselves through the frp plugin, whose logins go through the same bans
/// (docs/protocols/exapps.md).
public final class ExAppsPlugin: Plugin {
    public static let name = "exapps"
    public static let summary = "Nextcloud AppAPI gateway (HaRP replacement): decisions, bans, control plane, FRP-published ExApps"
    public static let dependencies = ["http", "websocket", "frp"]
    public static var defaultConfiguration: ExAppsConfiguration { ExAppsConfiguration() }
    public static let commands: [any ParsableCommand.Type] = [ExAppsCommand.self]

    public static func environmentOverrides(_ environment: [String: String]) throws(ConfigError) -> [ConfigOverride] {
        try HaRPEnvironment.overrides(environment)
    }

    public static func environmentDefault(_ environment: [String: String]) throws(ConfigError) -> String? {
        try HaRPEnvironment.defaultDocument(environment)
    }

    let state: ExAppsState
    private let listeners: ListenerSet
    private let control: ExAppsControlSocket

    public init(configuration: ExAppsConfiguration, context: PluginContext) throws {
        guard let http = context.dependency(HTTPProxyPlugin.self) else {
            throw ConfigError.plugins("exapps needs the http plugin")
        }
        let key = try configuration.resolvedSharedKey()
        let url = try NextcloudURL(configuration.nextcloudURL)
        let tls: TLSContext
        do {
            tls = try TLSContext.client(ca: configuration.nextcloudCA, verify: configuration.nextcloudVerify)
        } catch {
            throw ConfigError.invalid(key: "exapps.nextcloud_ca", value: "\"\(configuration.nextcloudCA ?? "")\"", reason: "\(error)")
        }
        if !configuration.nextcloudVerify {
            context.logger.warning("TLS verification of Nextcloud is off", metadata: ["nextcloud": "\(configuration.nextcloudURL)"])
        }
        // Records and user answers are small JSON: 256 KiB is far above any real one.
        let client = try HTTPClient(loops: context.loops, connectTimeout: .seconds(5), responseTimeout: configuration.nextcloudTimeout.duration,
                                    maxBodySize: 256 << 10, tls: tls)
        let frp = context.dependency(FRPPlugin.self)
        let logger = context.logger
        // Container actions wait on the Engine: image inspection, exec of update-ca-certificates.
        let engineClient = try HTTPClient(loops: context.loops, connectTimeout: .seconds(5), responseTimeout: .seconds(120), keepalive: 2)
        state = ExAppsState(configuration: configuration, sharedKey: key, nextcloud: { metrics in
            NextcloudClient(url: url, client: client, sharedKey: key, metrics: metrics, logger: logger)
        }, frp: frp, docker: DockerActions(client: engineClient, certificateDirectory: frp?.certificateDirectory), logger: logger)
        http.addSite(try ProxySite(name: "exapps", listen: configuration.listen, listenTLS: configuration.listenTLS,
                                   keyPrefix: "exapps.listen_tls",
                                   trustedProxies: configuration.trustedProxies, unreachableStatus: 503, providers: [ExAppsGateway(state: state)],
                                   observers: [ExAppsObserver(state: state)]))
        frp?.addLoginCheck(FRPLoginHook(state: state))
        listeners = ListenerSet(loops: context.loops, logger: logger)
        control = ExAppsControlSocket(state: state, path: configuration.resolvedControlSocket(environment: ProcessEnvironment.current()))
    }

    public func start() async throws {
        try control.listen(on: listeners)
    }

    public func stopAccepting() async {
        await listeners.stop()
        control.remove()
    }

    public var endpoints: [String] {
        ["Nextcloud at \(state.configuration.nextcloudURL)", "commands on \(control.socket.path)"]
    }
}
