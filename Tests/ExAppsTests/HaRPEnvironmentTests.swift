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
        var clean = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("HP_") && !$0.key.hasPrefix("NC_") && $0.key != "HARP_CERTS_DIR" }
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
        for _ in 0..<2 { _ = try shell("curl -s http://127.0.0.1:\(port)/exapps/app_api/info") }  // no key: two failures
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
        (["HP_SHARED_KEY": "k", "NC_INSTANCE_URL": "http://127.0.0.1", "HP_NEXTCLOUD_VERIFY": "no"], "HP_NEXTCLOUD_VERIFY"),
        (["HP_SHARED_KEY": "k", "NC_INSTANCE_URL": "http://127.0.0.1", "HP_NEXTCLOUD_CA": "/nonexistent/ca.pem"], "HP_NEXTCLOUD_CA"),
        // A HaRP variable without the key and the URL: HaRP's set-up was meant, not harp's demo.
        (["HP_EXAPPS_ADDRESS": "127.0.0.1:1"], "HP_EXAPPS_ADDRESS"),
    ])
    func invalidVariable(values: [String: String], variable: String) throws {
        let result = try HarpProcess.run(["serve"], environment: Self.environment(values))
        #expect(result.status != 0)
        #expect(result.stderr.contains("environment variable \(variable):"), "\(result.stderr)")
    }

    @Test("HaRP's variable alone names what is missing; `:port` binds every address as HAProxy did; HARP_CERTS_DIR moves frp/ under a config file too")
    func setUpMistakes() throws {
        let alone = try HarpProcess.run(["serve"], environment: Self.environment(["HP_EXAPPS_ADDRESS": "127.0.0.1:1"]))
        #expect(alone.status != 0)
        #expect(alone.stderr.contains("it also needs HP_SHARED_KEY (or HP_SHARED_KEY_FILE) and NC_INSTANCE_URL"), "\(alone.stderr)")
        #expect(!alone.stdout.contains("8080"), "no demo configuration")
        let colon = try HarpProcess.run(["config", "check"], environment: Self.environment([
            "HP_SHARED_KEY": "redact-me", "NC_INSTANCE_URL": "http://127.0.0.1", "HP_EXAPPS_ADDRESS": ":18780", "HP_FRP_ADDRESS": ":18782",
            "HP_NEXTCLOUD_VERIFY": "false", "HARP_CERTS_DIR": "/nonexistent-certs",
        ]))
        #expect(colon.status == 0, "\(colon.stderr)")
        #expect(colon.stdout.contains("listen = [\"0.0.0.0:18780\"]"), "\(colon.stdout)")
        #expect(colon.stdout.contains("listen = \"0.0.0.0:18782\""))
        #expect(colon.stdout.contains("nextcloud_verify = false"))
        #expect(!colon.stdout.contains("redact-me") && colon.stdout.contains("shared_key = \"(hidden)\""), "config check shows no secret")
        let file = try HarpProcess.run(["config", "check"], config: """
            [harp]
            plugins = ["http", "websocket", "frp", "exapps"]
            [frp]
            shared_key = "file-key"
            [exapps]
            nextcloud_url = "http://127.0.0.1:8080"
            shared_key = "file-key"
            """, environment: Self.environment(["HARP_CERTS_DIR": "/srv/harp-certs"]))
        #expect(file.status == 0, "\(file.stderr)")
        #expect(file.stdout.contains("cert_dir = \"/srv/harp-certs/frp\""), "\(file.stdout)")
    }

    @Test("a cert.pem harp cannot read stops it (HaRP served no HTTPS without a word)",
          .enabled(if: geteuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/runuser")))
    func unreadableCertificate() throws {
        let certs = NSTemporaryDirectory() + "harp-unreadable-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: certs, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: certs) }
        chmod(certs, 0o755)
        try "not for nobody".write(toFile: certs + "/cert.pem", atomically: false, encoding: .utf8)
        chmod(certs + "/cert.pem", 0o600)
        // As root every file is readable: the check runs as nobody, with a copy of the binary
        // nobody can reach (the checkout may sit in a directory only root enters).
        try FileManager.default.copyItem(atPath: HarpProcess.binary, toPath: certs + "/harp")
        let result = try shell("""
            cd / && runuser -u nobody -- env HP_SHARED_KEY=k NC_INSTANCE_URL=http://127.0.0.1 HARP_CERTS_DIR=\(certs) \
              \(certs)/harp config check 2>&1; echo "exit $?"
            """).output
        #expect(result.contains("environment variable HARP_CERTS_DIR: \(certs)/cert.pem exists but cannot be read"), "\(result)")
        #expect(result.hasSuffix("exit 1"), "\(result)")
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

    @Test("contrib's systemd units pass systemd-analyze verify", .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze")),
          arguments: ["harp.service", "harp-docker-tunnel.service"])
    func systemdUnit(name: String) throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let unit = try String(contentsOf: root.appendingPathComponent("contrib/\(name)"), encoding: .utf8)
        // The unit names the installed path; verify it against the binary just built.
        let directory = NSTemporaryDirectory() + "harp-unit-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try unit.replacingOccurrences(of: "/usr/local/bin/harp", with: HarpProcess.binary)
            .write(toFile: directory + "/\(name)", atomically: true, encoding: .utf8)
        let result = try shell("systemd-analyze verify \(directory)/\(name) 2>&1; echo \"exit $?\"").output
        #expect(result == "exit 0", "\(result)")
    }
}
