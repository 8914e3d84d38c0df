import Foundation
import Glibc
import HarpKernel
import HarpTestSupport
import Testing

/// HaRP's environment variables: alone they run HaRP's set-up; a wrong one stops startup
/// with a message naming it.
@Suite("HaRP environment")
struct HaRPEnvironmentTests {
    /// Everything a test sets, over a clean slate (no HP_* from the machine running the tests).
    static func environment(_ values: [String: String]) -> [String: String] {
        var clean = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("HP_") && $0.key != "NC_INSTANCE_URL" }
        clean.merge(values) { $1 }
        return clean
    }

    @Test("HP_SHARED_KEY and NC_INSTANCE_URL alone: the ExApps listener, FRP with mutual TLS and generated certificates, bans on")
    func harpSetUp() throws {
        let nextcloud = try FakeNextcloud(sharedKey: "env-key")
        defer { nextcloud.stop() }
        let certs = NSTemporaryDirectory() + "harp-env-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: certs) }
        // HaRP's HTTPS listener: on when <certs>/cert.pem (certificate and key in one file) exists.
        let pki = try TestCertificates()
        defer { pki.remove() }
        try FileManager.default.createDirectory(atPath: certs, withIntermediateDirectories: true)
        let bundle = try String(contentsOfFile: pki.certificate("localhost"), encoding: .utf8) + String(contentsOfFile: pki.key("localhost"), encoding: .utf8)
        try bundle.write(toFile: certs + "/cert.pem", atomically: true, encoding: .utf8)
        let port = freePort(), frpPort = freePort(), httpsPort = freePort()
        let harp = try HarpProcess(["serve"], environment: Self.environment([
            "HP_SHARED_KEY": "\"env-key\"", "NC_INSTANCE_URL": nextcloud.url + "/index.php/", "HARP_CERTS_DIR": certs,
            // The addresses move the listeners off HaRP's fixed ports, so tests can run side by side.
            "HP_EXAPPS_ADDRESS": "127.0.0.1:\(port)", "HP_FRP_ADDRESS": "127.0.0.1:\(frpPort)", "HP_BLACKLIST_COUNT": "2",
            "HP_EXAPPS_HTTPS_ADDRESS": "127.0.0.1:\(httpsPort)",
        ]))
        try harp.waitForOutput("harp: ready")
        let https = try shell("curl -s --cacert \(pki.ca) -H 'harp-shared-key: env-key' https://localhost:\(httpsPort)/exapps/app_api/heartbeat").output
        #expect(https == #"{"status":"ok"}"#, "the HTTPS listener with cert.pem")
        for file in ["ca.crt", "server.crt", "server.key", "client.crt", "client.key"] {
            #expect(FileManager.default.fileExists(atPath: "\(certs)/frp/\(file)"), "\(file) generated")
        }
        let info = try shell("curl -s -H 'harp-shared-key: env-key' http://127.0.0.1:\(port)/exapps/app_api/heartbeat").output
        #expect(info == #"{"status":"ok"}"#, "the quotes around the key were removed")
        // The FRP port wants TLS with a client certificate.
        let plain = try shell("curl -s -o /dev/null -w '%{http_code}' --max-time 3 http://127.0.0.1:\(frpPort)/").output
        #expect(plain == "000")
        let handshake = try shell("""
            echo | openssl s_client -connect 127.0.0.1:\(frpPort) -servername harp.nc -CAfile \(certs)/frp/ca.crt \
              -cert \(certs)/frp/client.crt -key \(certs)/frp/client.key 2>&1 | grep -q 'Verify return code: 0 (ok)' && echo verified
            """).output
        #expect(handshake == "verified", "harp.nc verifies against the generated CA")
        // Bans are on (HP_BLACKLIST_COUNT=2).
        for _ in 0..<2 { _ = try shell("curl -s http://127.0.0.1:\(port)/exapps/nosuchapp") }
        #expect(try shell("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:\(port)/exapps/app_api/info").output == "000")
        #expect(try harp.stop() == 0)
    }

    @Test("a Nextcloud host name that does not resolve yet does not stop startup: lookups get 503 until it does")
    func unresolvedNextcloud() throws {
        let port = freePort(), frpPort = freePort()
        let certs = NSTemporaryDirectory() + "harp-env-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: certs) }
        let harp = try HarpProcess(["serve"], environment: Self.environment([
            "HP_SHARED_KEY": "k", "NC_INSTANCE_URL": "http://nextcloud.invalid", "HARP_CERTS_DIR": certs,
            "HP_EXAPPS_ADDRESS": "127.0.0.1:\(port)", "HP_FRP_ADDRESS": "127.0.0.1:\(frpPort)",
        ]))
        try harp.waitForOutput("harp: ready")
        #expect(try shell("curl -s -w ' %{http_code}' http://127.0.0.1:\(port)/exapps/someapp/x").output == "503 Service Unavailable (HaRP) 503")
        #expect(try harp.stop() == 0)
        #expect(harp.stderr.contains("cannot resolve Nextcloud's host name"))
    }

    @Test("each invalid variable stops startup with a message naming it", arguments: [
        (["HP_SHARED_KEY": "k", "HP_SHARED_KEY_FILE": "/etc/hostname", "NC_INSTANCE_URL": "http://127.0.0.1"], "HP_SHARED_KEY_FILE"),
        (["NC_INSTANCE_URL": "http://127.0.0.1"], "HP_SHARED_KEY"),
        (["HP_SHARED_KEY": "bad\"key", "NC_INSTANCE_URL": "http://127.0.0.1"], "HP_SHARED_KEY"),
        (["HP_SHARED_KEY": "bad\u{7}key", "NC_INSTANCE_URL": "http://127.0.0.1"], "HP_SHARED_KEY"),
        (["HP_SHARED_KEY_FILE": "/nonexistent/key", "NC_INSTANCE_URL": "http://127.0.0.1"], "HP_SHARED_KEY_FILE"),
        (["HP_SHARED_KEY": "k"], "NC_INSTANCE_URL"),
        (["HP_SHARED_KEY": "k", "NC_INSTANCE_URL": "ftp://127.0.0.1"], "NC_INSTANCE_URL"),
        (["HP_SHARED_KEY": "k", "NC_INSTANCE_URL": "http://127.0.0.1", "HP_SESSION_LIFETIME": "11"], "HP_SESSION_LIFETIME"),
        (["HP_SHARED_KEY": "k", "NC_INSTANCE_URL": "http://127.0.0.1", "HP_BLACKLIST_COUNT": "-1"], "HP_BLACKLIST_COUNT"),
        (["HP_SHARED_KEY": "k", "NC_INSTANCE_URL": "http://127.0.0.1", "HP_BLACKLIST_WINDOW": "0"], "HP_BLACKLIST_WINDOW"),
        (["HP_SHARED_KEY": "k", "NC_INSTANCE_URL": "http://127.0.0.1", "HP_TRUSTED_PROXY_IPS": "10.0.0.0/8, nonsense"], "HP_TRUSTED_PROXY_IPS"),
        (["HP_SHARED_KEY": "k", "NC_INSTANCE_URL": "http://127.0.0.1", "HP_TIMEOUT_SERVER": "30 seconds"], "HP_TIMEOUT_SERVER"),
        (["HP_SHARED_KEY": "k", "NC_INSTANCE_URL": "http://127.0.0.1", "HP_LOG_LEVEL": "loud"], "HP_LOG_LEVEL"),
        (["HP_SHARED_KEY": "k", "NC_INSTANCE_URL": "http://127.0.0.1", "HP_EXAPPS_ADDRESS": "8780"], "HP_EXAPPS_ADDRESS"),
        (["HP_SHARED_KEY": "k", "NC_INSTANCE_URL": "http://127.0.0.1", "HP_FRP_ADDRESS": "0.0.0.0:99999"], "HP_FRP_ADDRESS"),
        (["HP_SHARED_KEY": "k", "NC_INSTANCE_URL": "http://127.0.0.1", "HP_FRP_CERT_VALIDITY_DAYS": "0"], "HP_FRP_CERT_VALIDITY_DAYS"),
    ])
    func invalidVariable(values: [String: String], variable: String) throws {
        let result = try HarpProcess.run(["serve"], environment: Self.environment(values))
        #expect(result.status != 0)
        #expect(result.stderr.contains("environment variable \(variable):"), "\(result.stderr)")
    }

    @Test("the variables override a config file, and `harp config check` shows the result")
    func overridesFile() throws {
        let result = try HarpProcess.run(["config", "check"], config: """
            [harp]
            plugins = ["http", "websocket", "frp", "exapps"]
            [http]
            listen = []
            [frp]
            shared_key = "file-key"
            [exapps]
            nextcloud_url = "http://127.0.0.1:8080"
            shared_key = "file-key"
            ban_count = 5
            """, environment: Self.environment(["HP_BLACKLIST_COUNT": "7", "HP_TIMEOUT_CLIENT": "90s", "HP_TRUSTED_PROXY_IPS": "10.0.0.0/8,'192.168.0.1'"]))
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("ban_count = 7"))
        #expect(result.stdout.contains("client_timeout = \"90s\""))
        #expect(result.stdout.contains("trusted_proxies = [\"10.0.0.0/8\", \"192.168.0.1\"]"), "\(result.stdout)")
    }

    @Test("contrib/harp.service passes systemd-analyze verify", .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze")))
    func systemdUnit() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let unit = try String(contentsOf: root.appendingPathComponent("contrib/harp.service"), encoding: .utf8)
        // The unit names the installed path; verify it against the binary just built.
        let directory = NSTemporaryDirectory() + "harp-unit-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try unit.replacingOccurrences(of: "/usr/local/bin/harp", with: HarpProcess.binary)
            .write(toFile: directory + "/harp.service", atomically: true, encoding: .utf8)
        let result = try shell("systemd-analyze verify \(directory)/harp.service 2>&1; echo \"exit $?\"").output
        #expect(result == "exit 0", "\(result)")
    }
}
