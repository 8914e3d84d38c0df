import ArgumentParser
import Glibc
import HarpKernel
import Logging
import Synchronization

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
        // Certificates are checked now (a bad file stops startup, `harp config check`
        // included); a mutual-TLS server whose cert_dir is empty makes its set at start.
        let tls = Self.needsGeneratedCertificates(configuration) ? nil : try Self.tlsContext(configuration)
        server = FRPServer(configuration: configuration, tls: tls, logger: context.logger)
        listeners = ListenerSet(loops: Array(context.loops.prefix(1)), logger: context.logger)
    }

    /// The server context from `cert_dir` (server.crt, server.key; ca.crt for mutual TLS).
    /// With mutual TLS and no certificates there yet, HaRP's set is generated first (as its
    /// start script does). A missing or bad file stops startup: TLS never quietly turns into
    /// plaintext.
    static func tlsContext(_ configuration: FRPConfiguration) throws -> TLSContext? {
        guard configuration.tls != .off else { return nil }
        let directory = configuration.certDir
        do {
            let context = try TLSContext.server(certificate: directory + "/server.crt", key: directory + "/server.key",
                                                clientCA: configuration.tls == .mutual ? directory + "/ca.crt" : nil, alpn: [])
            context.preferAES128()  // tunnels are bulk transfers
            return context
        } catch {
            throw ConfigError.invalid(key: "frp.cert_dir", value: "\"\(directory)\"", reason: "\(error)")
        }
    }

    /// Adds a login check (call from another plugin's `init`, e.g. the ExApps bans). Checks
    /// added so run before the `[frp] shared_key` check, so that the ExApps gateway sees, and
    /// counts toward a ban, every login with a wrong key.
    public func addLoginCheck(_ check: any FRPLoginCheck) {
        server.loginChecks.insert(check, at: server.loginChecks.firstIndex { $0 is SharedKeyCheck } ?? server.loginChecks.endIndex)
    }

    /// Where the server's certificates are (HaRP's /certs/frp): the ExApps plugin copies the
    /// CA and client pair into ExApp containers (`install_certificates`).
    public var certificateDirectory: String { configuration.certDir }

    /// The tunnels open now, by port (callable from any thread).
    public var tunnels: [Int: FRPTunnel] { server.tunnels.withLock { $0 } }

    /// Mutual TLS with none of HaRP's certificate files in `cert_dir` yet.
    static func needsGeneratedCertificates(_ configuration: FRPConfiguration) -> Bool {
        configuration.tls == .mutual && !CertificateSet.files.contains { access(configuration.certDir + "/" + $0, F_OK) == 0 }
    }

    public func start() async throws {
        guard let loop = context.loops.first else { return }
        if Self.needsGeneratedCertificates(configuration) {
            do {
                try CertificateSet.generate(into: configuration.certDir, days: configuration.certDays)
            } catch {
                throw ConfigError.invalid(key: "frp.cert_dir", value: "\"\(configuration.certDir)\"", reason: "\(error)")
            }
            context.logger.notice("generated FRP certificates (CA, server harp.nc, client harp.client.nc)",
                                  metadata: ["cert_dir": "\(configuration.certDir)"])
            server.tls = try Self.tlsContext(configuration)
        }
        server.attach(to: loop)
        let server = self.server
        try listeners.listen(on: configuration.listen, key: context.origins.describe("frp.listen"), loopCount: 1) { socket in
            await server.serve(socket)
        }
    }

    public var listenAddresses: [ConfiguredAddress] { [ConfiguredAddress(key: "frp.listen", address: configuration.listen)] }

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
