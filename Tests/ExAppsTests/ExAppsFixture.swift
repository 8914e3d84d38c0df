import Foundation
import HarpKernel
import HarpTestSupport
import Testing

/// harp's ExApps gateway on loopback with a fake Nextcloud and an ExApp (`HTTPTestOrigin`,
/// whose `/headers` echoes the request head it got). The app `myapp` has a route per access
/// level and one whose 401 counts toward a ban.
final class ExAppsFixture: @unchecked Sendable {
    // @unchecked Sendable: set once in init; the members guard themselves.
    static let key = "test-shared-key"
    let nextcloud: FakeNextcloud
    let app: HTTPTestOrigin
    let harp: HarpProcess
    let port: UInt16
    let frpPort: UInt16
    let certs: String

    /// `exapps` lines go into the `[exapps]` section (short TTLs, ban settings).
    /// The admin plugin's port when `admin` was asked for.
    let adminPort: UInt16?

    /// `nextcloudKey`: the key the fake Nextcloud expects (another than harp's: it refuses harp).
    init(exapps: String = "", frp: String = "", admin: Bool = false, environment: [String: String] = [:],
         nextcloudKey: String = key) throws {
        nextcloud = try FakeNextcloud(sharedKey: nextcloudKey)
        app = try HTTPTestOrigin()
        nextcloud.register("myapp", json: FakeNextcloud.record(token: "app-secret", version: "2.1.0", port: Int(app.address.port!), routes: [
            ("^/public", 0, []), ("^/user", 1, []), ("^/admin", 2, []), ("^/status/401", 0, [401]), ("^/headers", 0, []),
        ]))
        nextcloud.login("alice-session", user: "alice", level: 1)
        nextcloud.login("root-session", user: "root", level: 2)
        port = freePort()
        frpPort = freePort()
        certs = NSTemporaryDirectory() + "harp-exapps-\(UUID().uuidString)"
        adminPort = admin ? freePort() : nil
        harp = try HarpProcess.serve("""
            [harp]
            plugins = ["http", "websocket", "frp", "exapps"\(admin ? ", \"admin\"" : "")]
            log_level = "info"

            \(adminPort.map { "[admin]\nlisten = \"127.0.0.1:\($0)\"" } ?? "")

            [http]
            listen = []
            client_timeout = "2s"

            [frp]
            listen = "127.0.0.1:\(frpPort)"
            tls = "mutual"
            cert_dir = "\(certs)/frp"
            shared_key = "\(Self.key)"
            \(frp)

            [exapps]
            listen = ["127.0.0.1:\(port)"]
            nextcloud_url = "\(nextcloud.url)"
            shared_key = "\(Self.key)"
            \(exapps.contains("nextcloud_timeout") ? "" : "nextcloud_timeout = \"1s\"")
            \(exapps)
            """, environment: environment)
    }

    deinit {
        nextcloud.stop()
        app.stop()
        try? FileManager.default.removeItem(atPath: certs)
    }

    var base: String { "http://127.0.0.1:\(port)" }

    /// Stops harp; it must exit 0 (SIGTERM: graceful). Otherwise the end of its stderr and
    /// how it ended are in the failure.
    func stop(sourceLocation: SourceLocation = #_sourceLocation) throws {
        let status = try harp.stop()
        let how = harp.process.terminationReason == .uncaughtSignal ? "signal \(status)" : "exit \(status)"
        #expect(status == 0, "harp ended with \(how); its stderr ends: \(harp.stderr.suffix(3000))", sourceLocation: sourceLocation)
    }

    /// curl's status code and body for `path` (000 and "" when harp closed without a response).
    func get(_ path: String, headers: [String] = [], method: String = "GET", data: String? = nil) throws -> (code: String, body: String) {
        let headerFlags = headers.map { "-H '\($0)'" }.joined(separator: " ")
        let dataFlag = data.map { "--data-binary '\($0)'" } ?? ""
        let output = try shell("curl -s -X \(method) \(headerFlags) \(dataFlag) -w '\\n%{http_code}' '\(base)\(path)'").output
        let lines = output.components(separatedBy: "\n")
        return (lines.last ?? "", lines.dropLast().joined(separator: "\n"))
    }

    func code(_ path: String, headers: [String] = []) throws -> String { try get(path, headers: headers).code }

    /// An frpc.toml in the shape of HaRP's ExApp one (exapps_dev/start.sh): mutual TLS with
    /// this harp's generated certificates, server name harp.nc, the key in `metadatas.token`,
    /// one tcp proxy publishing a Unix socket (`unixPath`) or a local TCP port.
    func frpcConfig(name: String, remotePort: UInt16, unixPath: String? = nil, localPort: UInt16? = nil, key: String = key) -> String {
        let local = unixPath.map { "[proxies.plugin]\ntype = \"unix_domain_socket\"\nunixPath = \"\($0)\"" }
            ?? "localIP = \"127.0.0.1\"\nlocalPort = \(localPort ?? 0)"
        return """
            serverAddr = "127.0.0.1"
            serverPort = \(frpPort)
            loginFailExit = false
            transport.tls.enable = true
            transport.tls.certFile = "\(certs)/frp/client.crt"
            transport.tls.keyFile = "\(certs)/frp/client.key"
            transport.tls.trustedCaFile = "\(certs)/frp/ca.crt"
            transport.tls.serverName = "harp.nc"
            metadatas.token = "\(key)"
            log.level = "info"

            [[proxies]]
            remotePort = \(remotePort)
            type = "tcp"
            name = "\(name)"
            \(local)
            """
    }

    /// The six headers AppAPI sends with its own calls to an ExApp.
    static func appAPIHeaders(key: String = key, port: UInt16) -> [String] {
        ["EX-APP-VERSION: 2.1.0", "EX-APP-ID: myapp", "EX-APP-HOST: 127.0.0.1", "EX-APP-PORT: \(port)",
         "AUTHORIZATION-APP-API: \(Data("admin:app-secret".utf8).base64EncodedString())", "harp-shared-key: \(key)", "AA-REQUEST-ID: 42"]
    }
}
