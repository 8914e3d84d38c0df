import Foundation
import HarpKernel
import HarpTestSupport
import Testing

/// What an admin migrating from HaRP sees and can do around the gateway's decisions: whose
/// forwarded headers count, bans listed and lifted, the access log's fields.
@Suite("ExApps gateway operations")
struct ExAppsOperationsTests {
    /// The request head the ExApp got, as `header(name)` lookups.
    static func echoed(_ gateway: ExAppsFixture, headers: [String]) throws -> (String) -> [String] {
        let lines = try gateway.get("/exapps/myapp/headers?token=secret", headers: headers).body.components(separatedBy: "\r\n")
        return { name in
            lines.filter { $0.lowercased().hasPrefix(name.lowercased() + ":") }
                .map { String($0.dropFirst(name.count + 1)).trimmingCharacters(in: .whitespaces) }
        }
    }

    static let forwarded = ["X-Forwarded-For: 203.0.113.9", "X-Forwarded-Proto: https", "X-Forwarded-Host: cloud.example.com"]

    @Test("behind a trusted proxy (HP_TRUSTED_PROXY_IPS) the ExApp gets its X-Forwarded-* extended; from anyone else harp's own, with one warning")
    func forwardedHeaders() throws {
        let trusted = try ExAppsFixture(environment: ["HP_TRUSTED_PROXY_IPS": "127.0.0.1"])
        let header = try Self.echoed(trusted, headers: Self.forwarded)
        #expect(header("X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"])
        #expect(header("X-Forwarded-Proto") == ["https"], "apps behind an https front proxy build https URLs")
        #expect(header("X-Forwarded-Host") == ["cloud.example.com"])
        #expect(!trusted.harp.stderr.contains("not a trusted proxy"))
        try trusted.stop()

        let untrusted = try ExAppsFixture()
        for _ in 0..<2 {
            let header = try Self.echoed(untrusted, headers: Self.forwarded)
            #expect(header("X-Forwarded-For") == ["127.0.0.1"])
            #expect(header("X-Forwarded-Proto") == ["http"])
            #expect(header("X-Forwarded-Host") == ["127.0.0.1:\(untrusted.port)"])
        }
        try untrusted.harp.waitForOutput("X-Forwarded-For came from 127.0.0.1, which is not a trusted proxy")
        try untrusted.stop()
        #expect(untrusted.harp.occurrences(of: "not a trusted proxy") == 1, "logged once")
    }

    /// Three failures from a client behind the proxy, whose X-Forwarded-For the client began
    /// with a forged address ("first, real"); then a request from the same real client with
    /// another forged address: dropped (000) when the rule found the real one.
    static func forgedBan(rule: String) throws -> (ExAppsFixture, second: String) {
        let gateway = try ExAppsFixture(exapps: """
            ban_count = 3
            trusted_proxies = ["127.0.0.1"]
            client_address = "\(rule)"
            """)
        for _ in 0..<3 { _ = try gateway.code("/exapps/myapp/heartbeat", headers: ["X-Forwarded-For: 192.0.2.1, 198.51.100.7"]) }
        return (gateway, try gateway.code("/exapps/myapp/public", headers: ["X-Forwarded-For: 192.0.2.2, 198.51.100.7"]))
    }

    @Test("client_address = rightmost_untrusted bans the address the proxy saw, whatever the client writes first; HaRP's rule bans the forged one")
    func clientAddressRule() throws {
        let (rightmost, second) = try Self.forgedBan(rule: "rightmost_untrusted")
        #expect(second == "000", "the real client stays banned under a new forged address")
        try rightmost.harp.waitForOutput("client banned")
        #expect(rightmost.harp.stderr.contains("reason=internal_route"))
        #expect(rightmost.harp.stderr.contains("client=198.51.100.7"))
        try rightmost.stop()

        let (first, passed) = try Self.forgedBan(rule: "first")
        #expect(passed == "200", "HaRP's rule: the forged first entry was banned, not the client")
        try first.harp.waitForOutput("client banned")
        #expect(first.harp.stderr.contains("client=192.0.2.1"))
        try first.stop()
    }

    @Test("a ban is logged once with its reason and end, listed by `harp exapps bans`, and lifted by `bans clear IP` on the running harp")
    func bansListedAndCleared() throws {
        let gateway = try ExAppsFixture(exapps: "ban_count = 3\nban_window = \"60s\"")
        let config = ["--config", gateway.harp.configPath!]
        let none = try HarpProcess.run(["exapps", "bans"] + config)
        #expect(none.status == 0 && none.stdout.contains("no client is banned (a client is banned after 3 failures within 60 s)"), "\(none)")
        for _ in 0..<3 { _ = try gateway.code("/exapps/myapp/heartbeat") }
        #expect(try gateway.code("/exapps/myapp/public") == "000", "banned")
        try gateway.harp.waitForOutput("client banned")
        #expect(gateway.harp.occurrences(of: "client banned") == 1)
        #expect(gateway.harp.stderr.contains("reason=internal_route"))
        #expect(gateway.harp.stderr.contains("until="))

        let listed = try HarpProcess.run(["exapps", "bans", "--json"] + config)
        let object = try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [String: Any]
        let bans = object?["bans"] as? [[String: Any]] ?? []
        #expect(bans.count == 1)
        #expect(bans.first?["ip"] as? String == "127.0.0.1")
        #expect(bans.first?["reason"] as? String == "internal_route")
        #expect((bans.first?["ends_in_seconds"] as? Int).map { (1...60).contains($0) } == true, "\(bans)")

        let other = try HarpProcess.run(["exapps", "bans", "clear", "192.0.2.50"] + config)
        #expect(other.stdout.contains("no ban lifted (192.0.2.50 was not banned)"))
        #expect(try gateway.code("/exapps/myapp/public") == "000", "still banned")
        let cleared = try HarpProcess.run(["exapps", "bans", "clear", "127.0.0.1"] + config)
        #expect(cleared.status == 0 && cleared.stdout.contains("1 ban lifted"), "\(cleared)")
        #expect(try gateway.code("/exapps/myapp/public") == "200")
        let bad = try HarpProcess.run(["exapps", "bans", "clear", "not-an-ip"] + config)
        #expect(bad.status == 1 && bad.stderr == "harp: not-an-ip is not an IP address\n", "one clean line, no usage: \(bad)")
        try gateway.stop()
        let stopped = try HarpProcess.run(["exapps", "bans"] + config)
        #expect(stopped.status == 1 && stopped.stderr.hasPrefix("harp: the gateway is not running"), "\(stopped)")
    }

    @Test("the access log names the client the proxy vouches for, the proxy, the app, the user and why a request was refused; no query string")
    func accessLog() throws {
        let gateway = try ExAppsFixture(exapps: "trusted_proxies = [\"127.0.0.1\"]\nban_count = 0")
        _ = try Self.echoed(gateway, headers: ["X-Forwarded-For: 203.0.113.9", ExAppsGatewayTests.alice])
        _ = try gateway.code("/exapps/myapp/admin/x?token=secret", headers: [ExAppsGatewayTests.alice])
        try gateway.harp.waitForOutput("status=403")
        try gateway.stop()
        let lines = gateway.harp.stderr.components(separatedBy: "\n").filter { $0.contains("request") && $0.contains("method=GET") }
        let forwarded = lines.first { $0.contains("status=200") } ?? ""
        #expect(forwarded.contains("client=203.0.113.9") && forwarded.contains("proxy=127.0.0.1"), "\(forwarded)")
        #expect(forwarded.contains("app=myapp") && forwarded.contains("user=alice"), "\(forwarded)")
        #expect(forwarded.contains("path=/exapps/myapp/headers ") || forwarded.hasSuffix("path=/exapps/myapp/headers"), "\(forwarded)")
        #expect(!gateway.harp.stderr.contains("token=secret"), "query strings stay out of the log")
        let refused = lines.first { $0.contains("status=403") } ?? ""
        #expect(refused.contains("reason=forbidden") && refused.contains("user=alice"), "\(refused)")
    }

    @Test("Nextcloud refusing harp's key: one warning, 404s that ban nobody, a Nextcloud outage logged once, and `harp exapps check` fails")
    func nextcloudRefusesKey() throws {
        let gateway = try ExAppsFixture(exapps: "ban_count = 3\nunknown_app_ttl = \"1ms\"", nextcloudKey: "the-daemon-key")
        for _ in 0..<6 { #expect(try gateway.code("/exapps/myapp/public") == "404") }
        #expect(try gateway.code("/exapps/myapp/public") == "404", "six refusals banned nobody")
        try gateway.harp.waitForOutput("Nextcloud refused harp's key")
        #expect(gateway.harp.occurrences(of: "Nextcloud refused harp's key") == 1)
        let check = try HarpProcess.run(["exapps", "check", "--config", gateway.harp.configPath!])
        #expect(check.status == 1)
        #expect(check.stdout.contains("FAIL  Nextcloud refused the running harp's key"), "\(check.stdout)")

        // Nextcloud down: one warning for the outage, not one per request; one when it is back.
        gateway.nextcloud.setFailing(true)
        for _ in 0..<4 { #expect(try gateway.code("/exapps/otherapp/x") == "503") }
        gateway.nextcloud.setFailing(false)
        try gateway.harp.waitForOutput("Nextcloud's exapp-meta fails")
        #expect(gateway.harp.occurrences(of: "Nextcloud's exapp-meta fails") == 1, "\(gateway.harp.stderr)")
        try gateway.stop()
    }

    @Test("routes match the path as the ExApp reads it: /%61dmin and //admin meet the ADMIN route, not a PUBLIC catch-all",
          arguments: ["/admin/x", "/%61dmin/x", "//admin/x", "/%61%64%6D%69%6E", "///%61dmin"])
    func encodedPaths(path: String) throws {
        let gateway = try ExAppsFixture(exapps: "ban_count = 0")
        gateway.nextcloud.register("catchall", json: FakeNextcloud.record(token: "c", port: Int(gateway.app.address.port!),
                                                                          routes: [("^/admin", 2, []), (".*", 0, [])]))
        let code = try shell("curl -s --path-as-is -o /dev/null -w '%{http_code}' '\(gateway.base)/exapps/catchall\(path)'").output
        #expect(code == "403", "\(path) is an ADMIN path")
        let root = try shell("curl -s --path-as-is -o /dev/null -w '%{http_code}' -H '\(ExAppsGatewayTests.root)' '\(gateway.base)/exapps/catchall\(path)'").output
        #expect(root == "200" || root == "404", "an admin passes (the test app may not serve the path): \(root)")
        #expect(try shell("curl -s --path-as-is -o /dev/null -w '%{http_code}' '\(gateway.base)/exapps/catchall/%68eartbeat'").output == "000",
                "an internal route in escapes is still dropped")
        #expect(try gateway.code("/exapps/catchall/%2561dmin") == "200", "an escaped % is not decoded twice: it is a public path")
        try gateway.stop()
    }

    @Test("a 204 carries no Content-Length; an ExApp that refuses connections gets HaRP's 503, not 502")
    func statuses() throws {
        let gateway = try ExAppsFixture()
        let refusing = try RefusingPort()
        let record = FakeNextcloud.record(token: "t", port: Int(refusing.port), routes: [(".*", 0, [])])
        let head = try shell("""
            curl -s -i -X POST -H 'harp-shared-key: \(ExAppsFixture.key)' -H 'Content-Type: application/json' \
              --data-binary '\(record)' '\(gateway.base)/exapps/app_api/exapp_storage/down'
            """).output
        #expect(head.hasPrefix("HTTP/1.1 204 No Content"), "\(head)")
        #expect(!head.lowercased().contains("content-length"), "RFC 9110 §8.6: \(head)")
        #expect(try gateway.code("/exapps/down/x") == "503")
        try gateway.stop()
    }

    @Test("metrics carry the app (known apps only) and count spliced WebSocket and frp bytes as they move, within 1% of what was sent")
    func trafficMetrics() throws {
        let gateway = try ExAppsFixture(exapps: "ban_count = 0", admin: true)
        let echo = try WebSocketPeer.EchoServer()
        gateway.nextcloud.register("wsapp", json: FakeNextcloud.record(token: "w", port: Int(echo.port), routes: [(".*", 0, [])]))
        let origin = try HTTPTestOrigin()
        defer { origin.stop() }
        let tunnelPort = 23100 + UInt16.random(in: 0..<800)
        gateway.nextcloud.register("frpapp", json: FakeNextcloud.record(token: "f", port: Int(tunnelPort), routes: [(".*", 0, [])]))
        let frpc = try FRPClient(config: gateway.frpcConfig(name: "frpapp", remotePort: tunnelPort, localPort: origin.address.port!))
        defer { frpc.kill() }
        #expect(waitForListener(port: tunnelPort), "\(frpc.log)")
        func metrics() throws -> [String: Double] {
            let text = try shell("curl -s http://127.0.0.1:\(gateway.adminPort!)/metrics").output
            return Dictionary(text.split(separator: "\n").filter { !$0.hasPrefix("#") }.compactMap { line in
                line.lastIndex(of: " ").flatMap { index in Double(line[line.index(after: index)...]).map { (String(line[..<index]), $0) } }
            }, uniquingKeysWith: { $1 })
        }

        // 4 MB one way and back through a WebSocket (spliced: nothing inspects it).
        let size = 4_000_000
        let ws = try shell("python3 \(WebSocketPeer.script) big ws://127.0.0.1:\(gateway.port)/exapps/wsapp/ws \(size) 2>&1").output
        #expect(ws == "ok \(size)", "\(ws)")
        // 3 MB up and 3 MB down through the frp tunnel, on a connection harp keeps alive after.
        let body = String(repeating: "b", count: 3_000_000)
        try body.write(toFile: gateway.certs + "/body", atomically: false, encoding: .utf8)
        let posted = try shell("curl -s --data-binary @\(gateway.certs)/body '\(gateway.base)/exapps/frpapp/hash'").output
        #expect(posted.hasSuffix(" 3000000"), "\(posted)")
        let downloaded = try shell("curl -s -o /dev/null -w '%{size_download}' '\(gateway.base)/exapps/frpapp/chunked/3000000'").output
        #expect(downloaded == "3000000")

        var values: [String: Double] = [:]
        func within(_ name: String, _ sent: Int) -> Bool {
            guard let value = values[name] else { return false }
            return value >= Double(sent) && value <= Double(sent) * 1.01
        }
        // The WebSocket's counters settle when its relay ends, a moment after the client closed.
        _ = try waitUntil(timeout: 5, interval: 0.1) {
            values = try metrics()
            return within(#"harp_websocket_bytes_total{direction="to_upstream"}"#, size)
        }
        #expect(within(#"harp_websocket_bytes_total{direction="to_upstream"}"#, size), "\(values.filter { $0.key.contains("bytes") })")
        #expect(within(#"harp_websocket_bytes_total{direction="to_client"}"#, size))
        #expect(within(#"harp_exapps_bytes_total{direction="from_client",app="wsapp"}"#, size))
        #expect(within(#"harp_exapps_bytes_total{direction="to_client",app="wsapp"}"#, size))
        // frp's counters moved while harp still holds the work connection open (kept alive).
        #expect(within(#"harp_frp_bytes_total{direction="to_client"}"#, 3_000_000), "\(values.filter { $0.key.contains("frp_bytes") })")
        // Down: the body in chunks of 1,000 (7 bytes of framing each) and the heads.
        #expect(within(#"harp_frp_bytes_total{direction="to_user"}"#, 3_021_000))
        #expect(within(#"harp_exapps_bytes_total{direction="from_client",app="frpapp"}"#, 3_000_000))
        #expect(values[#"harp_exapps_decisions_total{outcome="forward",app="frpapp"}"#] == 2)
        #expect(values.keys.filter { $0.contains(#"app="nosuch"#) }.isEmpty)
        _ = try gateway.code("/exapps/nosuchapp/x")
        #expect(try metrics().keys.contains { $0.contains("nosuchapp") } == false, "an unknown app id makes no label")
        try gateway.stop()
    }

    @Test("at debug each decision is one line: outcome, reason, app, matched route, user-info result")
    func debugDecisions() throws {
        let gateway = try ExAppsFixture(environment: ["HP_LOG_LEVEL": "debug"])
        #expect(try gateway.code("/exapps/myapp/admin/x", headers: [ExAppsGatewayTests.alice]) == "403")
        #expect(try gateway.code("/exapps/myapp/public/y") == "200")
        try gateway.harp.waitForOutput("decided", count: 2)
        try gateway.stop()
        let lines = gateway.harp.stderr.split(separator: "\n").filter { $0.contains("] decided") || $0.hasSuffix(" decided") }
        let refused = lines.first { $0.contains("outcome=403") } ?? ""
        for field in ["reason=forbidden", "app=myapp", "route=^/admin", "user=alice", "path=/exapps/myapp/admin/x"] {
            #expect(refused.contains(field), "\(field) in \(refused)")
        }
        let forwarded = lines.first { $0.contains("outcome=forward") } ?? ""
        #expect(forwarded.contains("route=^/public") && forwarded.contains("user=-"), "no session: no user-info call: \(forwarded)")
    }

    @Test("harp tunnel honours frpc's log.level; a bad file is one clean line, exit 1")
    func tunnelLogLevel() throws {
        let gateway = try ExAppsFixture()
        let port = 23100 + UInt16.random(in: 0..<800)
        let quiet = try FRPClient(config: gateway.frpcConfig(name: "quiet", remotePort: port, localPort: gateway.app.address.port!)
            .replacingOccurrences(of: "log.level = \"info\"", with: "log.level = \"warn\""), kind: .harpTunnel)
        defer { quiet.kill() }
        #expect(waitForListener(port: port), "\(quiet.log)")
        #expect(!quiet.log.contains("login to server success") && !quiet.log.contains("start proxy success"), "\(quiet.log)")
        let loud = try FRPClient(config: gateway.frpcConfig(name: "loud", remotePort: port + 1, localPort: 1)
            .replacingOccurrences(of: "log.level = \"info\"", with: "log.level = \"loud\""), kind: .harpTunnel)
        #expect(loud.waitForExit() == 1)
        #expect(loud.log.hasPrefix("harp: config error: log.level = \"loud\" is invalid") && !loud.log.contains("USAGE"), "\(loud.log)")
        try gateway.stop()
    }
}
