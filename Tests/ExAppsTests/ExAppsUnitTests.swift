@testable import ExApps
import Foundation
import HTTPProxy
import HarpKernel
import Logging
import Testing

/// The gateway's pure pieces, in-process.
@Suite("ExApps pieces")
struct ExAppsUnitTests {
    @Test("app id and target path as HaRP's (?:^|/)exapps/([^/]+) and removeprefix find them")
    func appID() {
        #expect(ExAppsGateway.appID(in: "/exapps/MyApp/a/b")! == ("MyApp", "/a/b"))
        #expect(ExAppsGateway.appID(in: "/exapps/myapp")! == ("myapp", ""))
        #expect(ExAppsGateway.appID(in: "/index.php/exapps/myapp/x")! == ("myapp", "/index.php/exapps/myapp/x"), "found, not a prefix: kept whole")
        #expect(ExAppsGateway.appID(in: "/myexapps/x") == nil)
        #expect(ExAppsGateway.appID(in: "/exapps/") == nil)
        #expect(ExAppsGateway.appID(in: "/exapps//x") == nil)
        #expect(ExAppsGateway.appID(in: "/a/exapps//b/exapps/c/d")! == ("c", "/a/exapps//b/exapps/c/d"))
    }

    @Test("a .. segment in any spelling, and nothing else", arguments: [
        ("/a/../b", true), ("..", true), ("/a/..", true), ("/a/%2e%2e/b", true), ("/a/%2E.", true), ("/a%2f..%2Fb", true),
        ("/a/.%2e/b", true), ("/a/a..b", false), ("/a/.../b", false), ("/a/..b", false), ("/a/%2e", false), ("/a/%2", false), ("/a/.", false),
    ])
    func traversal(path: String, found: Bool) {
        #expect(PathTraversal.found(in: Substring(path)) == found)
    }

    @Test("route patterns: a literal prefix compared as bytes, the rest on POSIX ERE, both matching as Python's re.match does")
    func routePatterns() {
        #expect(RoutePattern.literalPrefix("^/api/v1") == Array("/api/v1".utf8))
        #expect(RoutePattern.literalPrefix(#"^\/api\/w\.x"#) == Array("/api/w.x".utf8))
        #expect(RoutePattern.literalPrefix("^/api/(a|b)") == nil)
        #expect(RoutePattern.literalPrefix(#"^/\d+"#) == nil)
        // Swift's Regex (backtracking, Python-like syntax) as the reference for short paths.
        let patterns = ["^/api/v1", #"^\/api"#, "ws", "^/api/(v1|v2)/x", ".*", #"^/\d+/x"#, #"^/(?:a|b)+/?$"#, #"^/(?P<id>[\w.-]+)/json"#,
                        #"^/files/.*?\.txt"#, #"^/[^/]+/[0-9]{2,3}"#, #"^/a\-b"#, "^/(x|y)?z", #"^/\w+$"#]
        let paths = ["/api/v1/x", "/api/v2/x", "ws/x", "/12/x", "/x", "", "/ab/", "/a.b-c/json", "/files/a/b.txt", "/q/123", "/a-b", "/z", "/yz",
                     "/abc", "/ab/c"]
        for pattern in patterns {
            let route = ExAppRoute(url: pattern, access: .everyone, bruteforceStatuses: [])
            #expect(route.isUsable, "\(pattern)")
            let regex = try! Regex(pattern.replacingOccurrences(of: "(?P<", with: "(?<"))
            for path in paths {
                #expect(route.matches(path) == ((try? regex.prefixMatch(in: path)) != nil), "\(pattern) on \(path)")
            }
        }
        #expect(ExAppRoute(url: "(?i)^/API", access: .everyone, bruteforceStatuses: []).matches("/api/x"))
        for unusable in ["([", #"^/(?=a)"#, #"^/(a)\1"#, #"^/\q"#] {
            let route = ExAppRoute(url: unusable, access: .everyone, bruteforceStatuses: [])
            #expect(!route.isUsable && !route.matches("/a"), "\(unusable) matches nothing")
        }
        // A pattern that backtracks exponentially in Swift's Regex (38 s for 20 bytes): linear here.
        let nested = ExAppRoute(url: #"^/(\w+/?)+$"#, access: .everyone, bruteforceStatuses: [])
        #expect(!nested.matches("/" + String(repeating: "a", count: 5000) + "!"))
        #expect(nested.matches("/aaa/bbb/"))
    }

    @Test("an expiring table stays bounded under a flood of fresh keys, at O(1) per insert")
    func expiringTable() {
        var table = ExpiringTable<Int>(capacity: 4)
        for index in 0..<4 { table.insert("k\(index)", index, until: 100, now: 0) }
        #expect(table.value("k2", now: 1) == 2)
        table.insert("k4", 4, until: 100, now: 1)  // full of live keys: emptied, then k4
        #expect(table.count == 1 && table.value("k4", now: 1) == 4)
        for index in 5..<8 { table.insert("k\(index)", index, until: 10, now: 1) }
        table.insert("k8", 8, until: 100, now: 50)  // full again: the expired three go, k4 stays
        #expect(table.count == 2 && table.value("k4", now: 50) == 4 && table.value("k8", now: 50) == 8)
        #expect(table.value("k4", now: 200) == nil, "expired on lookup")
    }

    @Test("the client address rules: first entry (HaRP's), rightmost untrusted, all trusted, garbage in the chain, untrusted peers")
    func clientAddressRules() throws {
        let proxy = ClientInfo(peer: .ipv4(host: UInt32(0x0A000005).bigEndian, port: 1), isTrustedProxy: true)
        let stranger = ClientInfo(peer: .ipv4(host: UInt32(0xC6336407).bigEndian, port: 1), isTrustedProxy: false)
        let trusted = [try IPRange(parsing: "10.0.0.0/8")]
        func client(_ rule: ClientAddressRule, _ peer: ClientInfo, _ pairs: [(String, String)]) -> String {
            rule.client(peer, headers: HTTPHeaders(pairs.map { (name: $0.0, value: $0.1) }), trusted: trusted)
        }
        let forged = [("X-Forwarded-For", "192.0.2.1, 203.0.113.9"), ("X-Forwarded-For", "10.0.0.7")]
        #expect(client(.first, proxy, forged) == "192.0.2.1")
        #expect(client(.rightmostUntrusted, proxy, forged) == "203.0.113.9", "past the trusted hop, the address the proxy saw")
        #expect(client(.rightmostUntrusted, proxy, [("X-Forwarded-For", "10.1.1.1, 10.0.0.7")]) == "10.1.1.1", "all trusted: the leftmost")
        #expect(client(.rightmostUntrusted, proxy, [("X-Forwarded-For", "203.0.113.9, nonsense"), ("X-Real-IP", "198.51.100.3")]) == "198.51.100.3",
                "a chain broken by garbage falls back to X-Real-IP")
        #expect(client(.rightmostUntrusted, proxy, [("X-Forwarded-For", "nonsense")]) == "10.0.0.5", "then to the peer")
        #expect(client(.first, stranger, forged) == "198.51.100.7", "an untrusted peer's headers count for nothing")
    }

    @Test("the ban table forgets IPs that are not banned when a flood fills it, and keeps the bans")
    func banTableFlood() {
        let bans = BanList(count: 2, window: .seconds(60), metrics: ExAppsMetrics(), logger: Logger(label: "test"))
        bans.fail("192.0.2.1", reason: "test")
        bans.fail("192.0.2.1", reason: "test")
        for index in 0..<(BanList.minimumSweep + 10) { bans.fail("10.\(index >> 16).\(index >> 8 & 255).\(index & 255)", reason: "test") }
        #expect(bans.isBanned("192.0.2.1"))
        #expect(!bans.isBanned("10.0.0.1"))
    }

    @Test("the Docker passthrough allow-list")
    func dockerAllowList() {
        #expect(DockerAllowList.allows(method: "GET", path: "/v1.44/_ping"))
        #expect(DockerAllowList.allows(method: "GET", path: "/V1.44/_PING"), "case-insensitive like HaRP's -i")
        #expect(!DockerAllowList.allows(method: "GET", path: "/v1.44/_ping/x"))
        #expect(DockerAllowList.allows(method: "GET", path: "/images/ghcr.io/nextcloud/app:1/json"))
        #expect(DockerAllowList.allows(method: "GET", path: "/containers/nc_app_a.b-c_1/logs"))
        #expect(!DockerAllowList.allows(method: "GET", path: "/containers/nc_app_é/json"))
        #expect(!DockerAllowList.allows(method: "GET", path: "/containers/nc_app_/json"))
        #expect(!DockerAllowList.allows(method: "POST", path: "/containers/nc_app_x/json"))
        #expect(!DockerAllowList.allows(method: "GET", path: "/vx/_ping"))
        #expect(DockerAllowList.allows(method: "POST", path: "/v1.41/images/create"))
        #expect(!DockerAllowList.allows(method: "GET", path: "/images/foo/json/get"), "an export is not an inspection")
        #expect(!DockerAllowList.allows(method: "GET", path: "/containers/nc_app_x/json/extra"))
        #expect(!DockerAllowList.allows(method: "PUT", path: "/images/create"))
    }

    @Test("HAProxy times become harp durations; 0 is no limit")
    func haproxyTimes() throws {
        #expect(try HaRPEnvironment.haproxyTime("30s", variable: "V") == "30000ms")
        #expect(try HaRPEnvironment.haproxyTime("1500", variable: "V") == "1500ms", "no unit: milliseconds")
        #expect(try HaRPEnvironment.haproxyTime("2m", variable: "V") == "120000ms")
        #expect(try HaRPEnvironment.haproxyTime("1d", variable: "V") == "86400000ms")
        #expect(try HaRPEnvironment.haproxyTime("0", variable: "V") == "576h")
        #expect(try HaRPEnvironment.haproxyTime("0s", variable: "V") == "576h")
        #expect(throws: ConfigError.self) { try HaRPEnvironment.haproxyTime("30 s", variable: "V") }
        #expect(throws: ConfigError.self) { try HaRPEnvironment.haproxyTime("-1s", variable: "V") }
    }

    @Test("the shared key: quotes stripped, printable ASCII, no \" or \\")
    func sharedKey() throws {
        #expect(try HaRPEnvironment.sharedKey(["HP_SHARED_KEY": "'abc def'"]) == "abc def")
        #expect(try HaRPEnvironment.sharedKey(["HP_SHARED_KEY": "\"abc\""]) == "abc")
        #expect(throws: ConfigError.self) { try HaRPEnvironment.sharedKey(["HP_SHARED_KEY": "a\\b"]) }
        #expect(throws: ConfigError.self) { try HaRPEnvironment.sharedKey(["HP_SHARED_KEY": "ümlaut"]) }
        #expect(throws: ConfigError.self) { try HaRPEnvironment.sharedKey(["HP_SHARED_KEY": "\"\""]) }
    }

    @Test("the frp client address: IPv4, bracketed IPv6 (HaRP's split broke it), bare")
    func frpClientAddress() {
        #expect(FRPLoginHook.host(of: "192.0.2.1:7000") == "192.0.2.1")
        #expect(FRPLoginHook.host(of: "[2001:db8::1]:7000") == "2001:db8::1")
        #expect(FRPLoginHook.host(of: "2001:db8::1") == "2001:db8::1")
    }

    @Test("records: lenient where AppAPI is (numeric strings), strict on types that decide")
    func records() throws {
        let record = try ExAppRecord.decode(Array(#"{"exapp_token":"t","exapp_version":"1","host":"h","port":"8080","routes":[{"url":".*","access_level":"1","bruteforce_protection":[401]}]}"#.utf8)).get()
        #expect(record.port == 8080)
        #expect(record.routes[0].access == .user)
        #expect(record.routes[0].bruteforceStatuses == [401])
        #expect(throws: RecordProblem.self) { try ExAppRecord.decode(Array(#"{"exapp_token":"t","exapp_version":1,"host":"h","port":1}"#.utf8)).get() }
        #expect(throws: RecordProblem.self) { try ExAppRecord.decode(Array(#"{"exapp_token":"t","exapp_version":"1","host":"h","port":1.5}"#.utf8)).get() }
        #expect(throws: RecordProblem.self) { try ExAppRecord.decode(Array(#"{"exapp_token":"t","exapp_version":"1","host":"h","port":true}"#.utf8)).get() }
        #expect(throws: RecordProblem.self) { try ExAppRecord.decode(Array(#"{"exapp_token":"t","exapp_version":"1","host":"h","port":0}"#.utf8)).get() }
        #expect(throws: RecordProblem.self) {
            try ExAppRecord.decode(Array(#"{"exapp_token":"t","exapp_version":"1","host":"h","port":1,"routes":[{"url":".*","access_level":true}]}"#.utf8)).get()
        }
    }
}
