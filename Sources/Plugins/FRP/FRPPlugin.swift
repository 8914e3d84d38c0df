import ArgumentParser
import Glibc
import HarpKernel
import Logging

/// `frp`: an frps-compatible tunnel server, so that containers running upstream frpc (ExApps)
/// publish their ports through harp without exposing any (frp protocol v1; docs/protocols/frp.md).
public final class FRPPlugin: Plugin {
    public static let name = "frp"
    public static let summary = "frps-compatible tunnel server for frpc clients (tcp proxies, TLS, tcpMux)"
    public static var defaultConfiguration: FRPConfiguration { FRPConfiguration() }
    public static let commands: [any ParsableCommand.Type] = [TunnelCommand.self, FRPCommand.self]

    let configuration: FRPConfiguration
    let context: PluginContext
    let server: FRPServer
    private let listeners: ListenerSet

    public init(configuration: FRPConfiguration, context: PluginContext) throws {
        self.configuration = configuration
        self.context = context
        server = FRPServer(configuration: configuration, tls: try Self.tlsContext(configuration, logger: context.logger), logger: context.logger)
        listeners = ListenerSet(loops: Array(context.loops.prefix(1)), logger: context.logger)
    }

    /// The server context from `cert_dir` (server.crt, server.key; ca.crt for mutual TLS).
    /// With mutual TLS and no certificates there yet, HaRP's set is generated first (as its
    /// start script does). A missing or bad file stops startup: TLS never quietly turns into
    /// plaintext.
    static func tlsContext(_ configuration: FRPConfiguration, logger: Logger) throws -> TLSContext? {
        guard configuration.tls != .off else { return nil }
        let directory = configuration.certDir
        if configuration.tls == .mutual && !CertificateSet.files.contains(where: { access(directory + "/" + $0, F_OK) == 0 }) {
            do {
                try CertificateSet.generate(into: directory, days: 5000)
            } catch {
                throw ConfigError.invalid(key: "frp.cert_dir", value: "\"\(directory)\"", reason: "\(error)")
            }
            logger.notice("generated FRP certificates (CA, server harp.nc, client harp.client.nc)", metadata: ["cert_dir": "\(directory)"])
        }
        do {
            return try TLSContext.server(certificate: directory + "/server.crt", key: directory + "/server.key",
                                         clientCA: configuration.tls == .mutual ? directory + "/ca.crt" : nil, alpn: [])
        } catch {
            throw ConfigError.invalid(key: "frp.cert_dir", value: "\"\(directory)\"", reason: "\(error)")
        }
    }

    /// Adds a login check (call from another plugin's `init`, e.g. the ExApps bans).
    public func addLoginCheck(_ check: any FRPLoginCheck) {
        server.loginChecks.append(check)
    }

    public func start() async throws {
        guard let loop = context.loops.first else { return }
        server.attach(to: loop)
        let server = self.server
        try listeners.listen(on: configuration.listen, loopCount: 1) { socket in await server.serve(socket) }
    }

    public func stopAccepting() async {
        await listeners.stop()
        guard let loop = context.loops.first else { return }
        let server = self.server
        await loop.spawn { await server.endAll() }.value
    }

    public var endpoints: [String] {
        listeners.boundAddresses.map { "frp://\($0) (tls \(configuration.tls.rawValue))" }
    }
}
