import Foundation
import Glibc
import HarpKernel
import HarpTestSupport
import Synchronization
import Testing

/// The request decision of HaRP, through the real harp binary, against a fake Nextcloud.
@Suite("ExApps gateway decisions")
struct ExAppsGatewayTests {
    static let alice = "Cookie: oc_sessionPassphrase=alice-session"
    static let root = "Cookie: oc_sessionPassphrase=root-session"

    @Test("anonymous, user and admin against PUBLIC, USER and ADMIN routes")
    func accessMatrix() throws {
        let gateway = try ExAppsFixture()
        var seen: [String] = []
        for who in [[], [Self.alice], [Self.root]] {
            seen.append(try ["public", "user", "admin"].map { try gateway.code("/exapps/myapp/\($0)/x", headers: who) }.joined(separator: " "))
        }
        #expect(seen == ["200 403 403", "200 200 403", "200 200 200"])
        let forbidden = try gateway.get("/exapps/myapp/admin/x", headers: [Self.alice])
        #expect(forbidden.body == "403 Forbidden")
        // A Basic Authorization header is asked about too (no cookie: not cached).
        gateway.nextcloud.login("Basic Ym9iOnB3", user: "bob", level: 1)
        #expect(try gateway.code("/exapps/myapp/user/x", headers: ["Authorization: Basic Ym9iOnB3"]) == "200")
        try gateway.stop()
    }

    @Test("the ExApp gets AppAPI's headers over the client's, its path without /exapps/<appid>, the query kept")
    func upstreamHeaders() throws {
        let gateway = try ExAppsFixture()
        let echoed = try gateway.get("/exapps/MyApp/headers/deep?q=1&r=2", headers: [
            Self.alice, "AUTHORIZATION-APP-API: forged", "EX-APP-ID: forged", "AA-VERSION: 1",
        ]).body
        let lines = echoed.components(separatedBy: "\r\n")
        #expect(lines.first == "GET /headers/deep?q=1&r=2 HTTP/1.1")
        func header(_ name: String) -> [String] {
            lines.filter { $0.lowercased().hasPrefix(name.lowercased() + ":") }.map { String($0.dropFirst(name.count + 1)).trimmingCharacters(in: .whitespaces) }
        }
        #expect(header("EX-APP-ID") == ["MyApp"], "the app id as the URL spells it")
        #expect(header("EX-APP-VERSION") == ["2.1.0"])
        #expect(header("AA-VERSION") == ["32"])
        #expect(header("AUTHORIZATION-APP-API") == [Data("alice:app-secret".utf8).base64EncodedString()])
        let anonymous = try gateway.get("/exapps/myapp/headers").body
        #expect(anonymous.contains("AUTHORIZATION-APP-API: \(Data(":app-secret".utf8).base64EncodedString())"))
        try gateway.stop()
    }

    @Test("404 for unknown apps, paths without /exapps/ and paths no route matches; drop for .. in every spelling and for internal routes")
    func notFoundAndDrops() throws {
        let gateway = try ExAppsFixture(exapps: "ban_count = 0")  // eleven failures follow: no ban in the way
        #expect(try gateway.get("/exapps/nosuchapp/x") == ("404", "404 Not Found"))
        #expect(try gateway.get("/index.php/apps/files") == ("404", "404 Not Found"))
        #expect(try gateway.get("/exapps/myapp/unrouted") == ("404", "404 Not Found"))
        for path in ["/exapps/myapp/public/../admin", "/exapps/myapp/public/%2e%2e/admin", "/exapps/myapp/public/%2E%2e/admin",
                     "/exapps/myapp/public%2f..%2fadmin", "/exapps/myapp/public/.%2E", "/exapps/myapp/heartbeat", "/exapps/myapp/init",
                     "/exapps/myapp/enabled"] {
            // --path-as-is: curl would otherwise resolve the dots itself.
            let code = try shell("curl -s --path-as-is -o /dev/null -w '%{http_code}' '\(gateway.base)\(path)'").output
            #expect(code == "000", "\(path) is dropped without a response")
        }
        #expect(try gateway.code("/exapps/myapp/public/a..b") == "200", "dots inside a segment are fine")
        try gateway.stop()
    }

    @Test("AppAPI's six-header calls: the right key passes its signature through (even to /heartbeat); a wrong key is dropped")
    func appAPICalls() throws {
        let gateway = try ExAppsFixture()
        let port = gateway.app.address.port!
        let signed = try gateway.get("/exapps/myapp/headers", headers: ExAppsFixture.appAPIHeaders(port: port))
        #expect(signed.code == "200")
        #expect(signed.body.contains("AUTHORIZATION-APP-API: \(Data("admin:app-secret".utf8).base64EncodedString())"))
        #expect(!signed.body.lowercased().contains("harp-shared-key"), "the gateway's key never reaches an ExApp: \(signed.body)")
        // An app Nextcloud does not know yet (its /init runs before it is enabled): the
        // headers say where it is.
        #expect(try gateway.code("/exapps/newapp/status/200", headers: ExAppsFixture.appAPIHeaders(port: port)) == "200")
        let heartbeat = try shell("curl -s -o /dev/null -w '%{http_code}' \(ExAppsFixture.appAPIHeaders(port: port).map { "-H '\($0)'" }.joined(separator: " ")) '\(gateway.base)/exapps/myapp/status/200'").output
        #expect(heartbeat == "200")
        #expect(try gateway.code("/exapps/myapp/public", headers: ExAppsFixture.appAPIHeaders(key: "wrong", port: port)) == "000")
        try gateway.stop()
    }

    @Test("bans: N failures inside the window drop everything from that IP until they age out")
    func bans() throws {
        let gateway = try ExAppsFixture(exapps: "ban_count = 3\nban_window = \"2s\"")
        // Nextcloud's first 401 counts toward a ban only once it has accepted harp's key (a 200).
        #expect(try gateway.code("/exapps/myapp/public") == "200")
        for _ in 0..<3 { #expect(try gateway.code("/exapps/nosuchapp/x") == "404") }
        #expect(try gateway.code("/exapps/myapp/public") == "000", "banned: dropped")
        Thread.sleep(forTimeInterval: 2.3)
        #expect(try gateway.code("/exapps/myapp/public") == "200", "the failures aged out")
        // The right key makes a request trusted: its 404s are not counted.
        for _ in 0..<4 { #expect(try gateway.code("/exapps/nosuchapp/x", headers: ["harp-shared-key: \(ExAppsFixture.key)"]) == "404") }
        #expect(try gateway.code("/exapps/myapp/public") == "200")
        try gateway.stop()
    }

    @Test("behind a trusted proxy the ban follows X-Forwarded-For (else X-Real-IP); an untrusted peer's header is ignored")
    func bansBehindTrustedProxies() throws {
        let trusted = try ExAppsFixture(exapps: "ban_count = 2\nban_window = \"30s\"\ntrusted_proxies = [\"127.0.0.0/8\"]")
        #expect(try trusted.code("/exapps/myapp/public") == "200")  // Nextcloud accepted the key: its 401s count
        for _ in 0..<2 { #expect(try trusted.code("/exapps/nosuchapp", headers: ["X-Forwarded-For: 203.0.113.7, 10.0.0.1"]) == "404") }
        #expect(try trusted.code("/exapps/myapp/public", headers: ["X-Forwarded-For: 203.0.113.7"]) == "000")
        #expect(try trusted.code("/exapps/myapp/public", headers: ["X-Forwarded-For: 203.0.113.8"]) == "200", "another client behind the proxy")
        for _ in 0..<2 { #expect(try trusted.code("/exapps/nosuchapp", headers: ["X-Real-IP: 198.51.100.1"]) == "404") }
        #expect(try trusted.code("/exapps/myapp/public", headers: ["X-Real-IP: 198.51.100.1"]) == "000")
        #expect(try trusted.code("/exapps/myapp/public") == "200", "the proxy itself is not banned")
        try trusted.stop()

        let untrusted = try ExAppsFixture(exapps: "ban_count = 2\nban_window = \"30s\"")
        #expect(try untrusted.code("/exapps/myapp/public") == "200")
        for index in 0..<2 { #expect(try untrusted.code("/exapps/nosuchapp", headers: ["X-Forwarded-For: 203.0.113.\(index)"]) == "404") }
        #expect(try untrusted.code("/exapps/myapp/public", headers: ["X-Forwarded-For: 198.51.100.9"]) == "000", "the peer's own IP is banned")
        try untrusted.stop()
    }

    @Test("bruteforce_protection: an upstream status the route lists counts as a failure")
    func bruteforceProtection() throws {
        let gateway = try ExAppsFixture(exapps: "ban_count = 2\nban_window = \"30s\"")
        #expect(try gateway.code("/exapps/myapp/status/401") == "401")
        #expect(try gateway.code("/exapps/myapp/public") == "200", "one failure: not banned yet")
        #expect(try gateway.code("/exapps/myapp/status/401") == "401")
        #expect(try gateway.code("/exapps/myapp/public") == "000", "two: banned")
        try gateway.stop()
    }

    @Test("sessions are cached for session_lifetime; records until replaced; unknown apps for unknown_app_ttl")
    func caches() throws {
        let gateway = try ExAppsFixture(exapps: "session_lifetime = \"1s\"\nunknown_app_ttl = \"1s\"")
        let nextcloud = gateway.nextcloud
        for _ in 0..<3 { #expect(try gateway.code("/exapps/myapp/user/x", headers: [Self.alice]) == "200") }
        #expect(nextcloud.calls("exapp-meta").count == 1)
        #expect(nextcloud.calls("user-info").count == 1)
        Thread.sleep(forTimeInterval: 1.2)
        #expect(try gateway.code("/exapps/myapp/user/x", headers: [Self.alice]) == "200")
        #expect(nextcloud.calls("user-info").count == 2, "the session answer expired")
        #expect(nextcloud.calls("exapp-meta").count == 1, "the record did not")
        // The user-info call carries the client's headers and the key, not Host or Content-Length.
        let call = nextcloud.calls("user-info")[0]
        #expect(call.header("cookie") == "oc_sessionPassphrase=alice-session")
        #expect(call.header("harp-shared-key") == ExAppsFixture.key)
        #expect(call.appID == "myapp")

        for _ in 0..<3 { #expect(try gateway.code("/exapps/later/x") == "404") }
        #expect(nextcloud.calls("exapp-meta").filter { $0.appID == "later" }.count == 1, "unknown is remembered")
        nextcloud.register("later", json: FakeNextcloud.record(token: "t", port: Int(gateway.app.address.port!), routes: [(".*", 0, [])]))
        Thread.sleep(forTimeInterval: 1.2)
        #expect(try gateway.code("/exapps/later/x") == "200", "asked again once unknown expired")
        try gateway.stop()
    }

    @Test("50 concurrent requests on a cold cache make one exapp-meta and one user-info call")
    func coalescedMisses() throws {
        let gateway = try ExAppsFixture()
        gateway.nextcloud.setDelay(300)
        let codes = try shell("""
            seq 50 | xargs -P 50 -I{} curl -s -o /dev/null -w '%{http_code}\\n' -H '\(Self.alice)' '\(gateway.base)/exapps/myapp/user/{}' \
              | sort | uniq -c | awk '{ print $1, $2 }'
            """).output
        #expect(codes == "50 200")
        #expect(gateway.nextcloud.calls("exapp-meta").count == 1)
        #expect(gateway.nextcloud.calls("user-info").count == 1)
        try gateway.stop()
    }

    @Test("Nextcloud down: cached apps keep serving; an uncached one gets 503 within nextcloud_timeout; a 5xx user-info is 401")
    func nextcloudDown() throws {
        let gateway = try ExAppsFixture()
        #expect(try gateway.code("/exapps/myapp/public") == "200")
        gateway.nextcloud.setFailing(true)
        #expect(try gateway.get("/exapps/myapp/user/x", headers: [Self.alice]) == ("401", "401 Unauthorized"))
        #expect(try gateway.get("/exapps/other/x") == ("503", "503 Service Unavailable (HaRP)"))
        gateway.nextcloud.setFailing(false)
        gateway.nextcloud.setDelay(3000)  // longer than nextcloud_timeout (1 s)
        let started = Date()
        #expect(try gateway.code("/exapps/another/x") == "503")
        #expect(Date().timeIntervalSince(started) < 2.5, "answered at the timeout, not when Nextcloud is")
        #expect(try gateway.code("/exapps/myapp/public") == "200")
        gateway.nextcloud.server.down.store(true, ordering: .relaxed)
        #expect(try gateway.code("/exapps/yetanother/x") == "503")
        #expect(try gateway.code("/exapps/myapp/public") == "200")
        try gateway.stop()
    }

    @Test("a slow Nextcloud lookup for one app does not delay another app's requests")
    func slowLookupIsolated() throws {
        let gateway = try ExAppsFixture(exapps: "nextcloud_timeout = \"10s\"")
        #expect(try gateway.code("/exapps/myapp/public") == "200")  // cached from now on
        gateway.nextcloud.setDelay(3000)
        let slow = try shellBackground("curl -s -o /dev/null -w '%{http_code}' '\(gateway.base)/exapps/slowapp/x'")
        Thread.sleep(forTimeInterval: 0.3)
        for _ in 0..<20 { #expect(try gateway.code("/exapps/myapp/public") == "200") }
        #expect(slow.isRunning, "the slow lookup is still waiting for Nextcloud while the cached app answered 20 requests")
        slow.waitUntilExit()
        try gateway.stop()
    }

    @Test("a route pattern that backtracks exponentially in Swift's Regex costs nothing here; other apps are not held up")
    func nestedQuantifierRoute() throws {
        let gateway = try ExAppsFixture()
        gateway.nextcloud.register("nested", json: FakeNextcloud.record(token: "t", port: Int(gateway.app.address.port!), routes: [
            (#"^/(\w+/?)+$"#, 0, []),
        ]))
        #expect(try gateway.code("/exapps/nested/aaaa/bbbb") == "200")
        #expect(try gateway.code("/exapps/nested/" + String(repeating: "a", count: 4000) + "!") == "404")
        #expect(try gateway.code("/exapps/myapp/public") == "200")
        try gateway.stop()
    }

    @Test("a known app id without /exapps/ gets a 404 that names the front-proxy mistake")
    func frontProxyHint() throws {
        let gateway = try ExAppsFixture()
        #expect(try gateway.code("/exapps/myapp/public") == "200")
        let hint = try gateway.get("/myapp/public/x")
        #expect(hint.code == "404")
        #expect(hint.body.contains("/exapps/") && hint.body.contains("nginx:") && hint.body.contains("Caddy:")
                && hint.body.contains("Traefik:") && hint.body.contains("Apache:"))
        try gateway.stop()
        #expect(gateway.harp.stderr.components(separatedBy: "front proxy strips the prefix").count == 2, "logged once")
    }

    @Test("metrics: decisions by outcome, cache hits and misses, Nextcloud call latency, bans active")
    func metrics() throws {
        let gateway = try ExAppsFixture(exapps: "ban_count = 2\nban_window = \"60s\"", admin: true)
        for _ in 0..<3 { #expect(try gateway.code("/exapps/myapp/public") == "200") }
        #expect(try gateway.code("/exapps/myapp/user/x", headers: [Self.alice]) == "200")
        #expect(try gateway.code("/exapps/myapp/admin/x", headers: [Self.alice]) == "403")
        #expect(try gateway.code("/exapps/nosuchapp/x") == "404")  // the second failure: banned
        #expect(try gateway.code("/exapps/myapp/public") == "000")
        let metrics = try shell("curl -s http://127.0.0.1:\(gateway.adminPort!)/metrics").output
        func value(_ line: String) -> Double? {
            metrics.split(separator: "\n").first { $0.hasPrefix(line + " ") }.flatMap { Double($0.split(separator: " ").last!) }
        }
        #expect(value(#"harp_exapps_decisions_total{outcome="forward",app="myapp"}"#) == 4, "\(metrics)")
        #expect(value(#"harp_exapps_decisions_total{outcome="403",app="myapp"}"#) == 1)
        #expect(value(#"harp_exapps_decisions_total{outcome="404",app=""}"#) == 1, "nosuchapp: no label of its own")
        #expect(value(#"harp_exapps_decisions_total{outcome="drop",app=""}"#) == 1, "a ban drops before the app is read")
        #expect(value(#"harp_exapps_cache_total{cache="records",result="miss"}"#) == 2, "myapp once, nosuchapp once")
        #expect(value(#"harp_exapps_cache_total{cache="records",result="hit"}"#) == 4)
        #expect(value(#"harp_exapps_cache_total{cache="sessions",result="hit"}"#) == 1)
        #expect(value("harp_exapps_bans_active") == 1)
        #expect(metrics.contains(#"harp_exapps_nextcloud_seconds_count{endpoint="exapp-meta",outcome="200"} 1"#))
        try gateway.stop()
    }
}
