import Foundation
import HTTPProxy
import HarpKernel
import Logging

/// The request decision of HaRP's agent (docs/protocols/exapps.md, "Deciding a request"), as
/// the http plugin's route provider for the ExApps listeners: drop, 401, 403, 404 or 503 with
/// HaRP's bodies, the control plane, or a forward to the ExApp with AppAPI's headers set.
/// After a forward, the request, its body, the response and an upgraded connection go through
/// the proxy's relay like any route's (splice on plain legs).
struct ExAppsGateway: RouteProvider {
    let state: ExAppsState

    func route(_ request: inout HTTPRequestHead, client: ClientInfo, exchange: Exchange) async -> RouteDecision? {
        let (decision, outcome) = await decide(&request, client: client, exchange: exchange)
        let context = exchange.context as? ExAppsExchange
        (context?.counters ?? state.metrics.unknownApp).decided(outcome)
        if state.logger.logLevel <= .debug {
            // Why, in one line: what an admin needs to see how harp decided a request.
            state.logger.debug("decided", metadata: [
                "outcome": "\(outcome)", "reason": "\(exchange.reason ?? "-")", "app": "\(exchange.app ?? "-")",
                "route": "\(exchange.route ?? "-")", "user": "\(exchange.user.map { $0.isEmpty ? "(anonymous)" : $0 } ?? "-")",
                "client": "\(exchange.client ?? client.address)", "path": "\(request.path)",
            ])
        }
        return decision
    }

    typealias Decided = (RouteDecision, outcome: String)

    static let forbidden: Decided = (.respond(status: 403, body: "403 Forbidden"), "403")
    static let notFound: Decided = (.respond(status: 404, body: "404 Not Found"), "404")
    static let unauthorized: Decided = (.respond(status: 401, body: "401 Unauthorized"), "401")
    static let unavailable: Decided = (.respond(status: 503, body: "503 Service Unavailable (HaRP)"), "503")
    static let dropped: Decided = (.drop, "drop")

    private func decide(_ request: inout HTTPRequestHead, client: ClientInfo, exchange: Exchange) async -> Decided {
        let bans = state.bans
        // 1. Who is asking, and are they banned?
        let ip = state.clientIP(client, headers: request.headers)
        if ip != client.address { exchange.client = ip }
        /// A failure toward `ip`'s ban (unless the request carried the key), and why the
        /// request was refused, for the access log.
        func fail(_ reason: String, counts: Bool = true, _ decided: Decided) -> Decided {
            exchange.reason = reason
            if counts { bans.fail(ip, reason: reason) }
            return decided
        }
        if bans.isBanned(ip) { return fail("ban", counts: false, Self.dropped) }
        // Trusted only with exactly one copy of the right key: with two, harp and a front proxy
        // could disagree on which one counts.
        let trusted = request.headers.count(of: "harp-shared-key") == 1
            && request.headers["harp-shared-key"].map { SecretComparison.equal($0, state.sharedKey) } ?? false
        let path = request.path
        // 2. `..` in any spelling.
        if PathTraversal.found(in: path) { return fail("traversal", counts: !trusted, Self.dropped) }
        // 3. The app id.
        guard let (appID, targetPath) = Self.appID(in: path) else {
            if let hint = state.frontProxyHint(for: path) { return fail("prefix_stripped", counts: false, (hint, "404")) }
            return fail("no_app", counts: !trusted, Self.notFound)
        }
        let lowerID = appID.lowercased()
        exchange.app = lowerID
        let query = request.target.utf8.firstIndex(of: UInt8(ascii: "?")).map { String(request.target[$0...]) } ?? ""
        // 4. The control plane.
        if appID == "app_api" {
            guard trusted else {
                state.refusedKeys.refused(from: ip, path: path.description)
                return fail("control_key", Self.unauthorized)
            }
            return await state.control.handle(&request, targetPath: targetPath, query: query, exchange: exchange)
        }
        let loop = exchange.loop
        let headers = request.headers
        // 5. AppAPI calling its ExApp: all six headers.
        if let version = headers["ex-app-version"], headers["ex-app-id"] != nil, let host = headers["ex-app-host"],
           let portText = headers["ex-app-port"], headers["authorization-app-api"] != nil, headers["harp-shared-key"] != nil {
            guard trusted else {
                // Counted against the peer: AppAPI calls come straight from Nextcloud.
                exchange.reason = "appapi_key"
                state.refusedKeys.refused(from: client.address, path: path.description)
                bans.fail(client.address, reason: "appapi_key")
                return Self.dropped
            }
            let entry: ExAppEntry
            switch await state.directory.lookup(lowerID, fetch: { await state.nextcloud.record(lowerID, on: loop) }) {
            case .found(let found):
                entry = found
                exchange.context = ExAppsExchange(counters: state.metrics.app(lowerID))
            case .unknown, .refused, .failed:
                // Not in Nextcloud yet (its /init runs before the app is enabled): the
                // headers say where it is.
                guard let port = Int(portText) else { return Self.unavailable }
                let record = ExAppRecord(token: "", version: version, host: host, port: port, routes: [])
                entry = await ExAppEntry.resolving(record)
            }
            return forward(&request, entry, appID: appID, targetPath: targetPath, query: query, authorization: nil)
        }
        // 6. Everyone else: the app must be known.
        let entry: ExAppEntry
        switch await state.directory.lookup(lowerID, fetch: { await state.nextcloud.record(lowerID, on: loop) }) {
        case .found(let found): entry = found
        case .unknown:
            return fail("unknown_app", counts: !trusted, Self.notFound)
        case .refused:
            return fail("nextcloud_refused_key", counts: false, Self.notFound)
        case .failed:
            return fail("nextcloud_unavailable", counts: false, Self.unavailable)
        }
        var context = ExAppsExchange(counters: state.metrics.app(lowerID))
        exchange.context = context
        let routePath = RoutePath.normalized(targetPath)
        if routePath == "/heartbeat" || routePath == "/init" || routePath == "/enabled" {
            return fail("internal_route", Self.dropped)
        }
        // 7. Who the user is, when the request says.
        var user: NextcloudUser?
        let cookie = Self.cookie("oc_sessionPassphrase", in: headers)
        if cookie != nil || headers["authorization"] != nil {
            let answer = await state.sessions.answer(cookie: cookie) {
                await state.nextcloud.user(appID: lowerID, clientHeaders: headers, on: loop)
            }
            switch answer {
            case .user(let found):
                user = found
                exchange.user = found.id
            case .anonymous: break
            case .failed: return fail("user_info_failed", counts: false, Self.unauthorized)
            }
        }
        // 8. The first route that matches the path as the ExApp will read it decides.
        guard let route = entry.record.route(for: routePath) else { return fail("no_route", Self.notFound) }
        exchange.route = route.url
        if route.access != .everyone {
            guard let user, user.level >= route.access else { return fail("forbidden", Self.forbidden) }
        }
        if !route.bruteforceStatuses.isEmpty {
            context.bruteforce = BruteforceWatch(ip: ip, statuses: route.bruteforceStatuses)
            exchange.context = context
        }
        // 9. AppAPI's signature: base64("<user id>:<app secret>"), the user empty when anonymous.
        let authorization = user.map { Data("\($0.id):\(entry.record.token)".utf8).base64EncodedString() } ?? entry.anonymousAuthorization
        return forward(&request, entry, appID: appID, targetPath: targetPath, query: query, authorization: authorization)
    }

    /// The request rewritten for the ExApp: its path without `/exapps/<appid>`, AppAPI's
    /// headers set over whatever the client sent (`authorization` nil: AppAPI's own passes).
    private func forward(_ request: inout HTTPRequestHead, _ entry: ExAppEntry, appID: String, targetPath: String, query: String,
                         authorization: String?) -> Decided {
        guard let upstream = entry.upstream else { return Self.notFound }
        request.target = (targetPath.isEmpty ? "/" : targetPath) + query
        // The gateway's key is Nextcloud's and harp's alone: an ExApp never sees it (HaRP
        // passed AppAPI's copy on; a compromised app could then call the control plane).
        request.headers.remove("harp-shared-key")
        request.headers.set("EX-APP-ID", appID)
        request.headers.set("EX-APP-VERSION", entry.record.version)
        request.headers.set("AA-VERSION", "32")
        if let authorization { request.headers.set("AUTHORIZATION-APP-API", authorization) }
        return (.forward(upstream), "forward")
    }

    /// HaRP's `(?:^|/)exapps/([^/]+)`: the app id as written, and the path after it. Bytes,
    /// not Foundation's `range(of:)`: that search was 5% of harp's CPU at 23k req/s.
    static let marker = Array("exapps/".utf8)

    static func appID(in path: Substring) -> (String, String)? {
        let bytes = path.utf8
        var index = bytes.startIndex
        while index != bytes.endIndex {
            let atStart = index == bytes.startIndex || bytes[bytes.index(before: index)] == UInt8(ascii: "/")
            if atStart && bytes[index...].starts(with: marker) {
                let idStart = bytes.index(index, offsetBy: marker.count)
                let idEnd = bytes[idStart...].firstIndex(of: UInt8(ascii: "/")) ?? bytes.endIndex
                if idStart != idEnd {
                    let id = String(path[idStart..<idEnd])
                    // HaRP removes "/exapps/<id>" as a prefix only; elsewhere in the path it stays.
                    let target = index == bytes.index(after: bytes.startIndex) && bytes.first == UInt8(ascii: "/")
                        ? String(path[idEnd...]) : String(path)
                    return (id, target)
                }
            }
            index = bytes.index(after: index)
        }
        return nil
    }

    /// The value of the cookie `name` in the Cookie headers, nil when absent or empty.
    static func cookie(_ name: String, in headers: HTTPHeaders) -> String? {
        for line in headers.values("cookie") {
            for part in line.split(separator: ";") {
                let pair = part.drop { $0 == " " }
                guard pair.hasPrefix(name + "=") else { continue }
                let value = pair.dropFirst(name.count + 1)
                return value.isEmpty ? nil : String(value)
            }
        }
        return nil
    }
}

/// What the gateway decided that the observer needs after the exchange: the app's counters
/// (a known app's, found with its record: one lookup per request), and its route's
/// `bruteforce_protection`.
struct ExAppsExchange: Sendable {
    let counters: ExAppsMetrics.AppCounters
    var bruteforce: BruteforceWatch?
}

/// A route with `bruteforce_protection`: the statuses that count as a failure for `ip` when
/// the ExApp answers with them.
struct BruteforceWatch: Sendable {
    let ip: String
    let statuses: [Int]
}

/// After each exchange: its bytes on the app's counters, and a failure when the ExApp's
/// answer is one its route lists.
struct ExAppsObserver: ResponseObserver {
    let state: ExAppsState

    func observe(_ exchange: Exchange, client: ClientInfo) {
        let context = exchange.context as? ExAppsExchange
        (context?.counters ?? state.metrics.unknownApp).traffic(fromClient: exchange.requestBytes, toClient: exchange.responseBytes)
        guard let watch = context?.bruteforce, watch.statuses.contains(exchange.status) else { return }
        state.bans.fail(watch.ip, reason: "bruteforce_status")
    }
}

/// HaRP's `(?:^|/|%2[fF])(?:\.|%2[eE]){2}(?:/|%2[fF]|$)`: a `..` segment however it is spelled.
enum PathTraversal {
    static func found(in path: Substring) -> Bool {
        var path = path
        return path.withUTF8 { found(in: $0) }
    }

    static func found(in bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        func isPercent2(_ i: Int, _ letter: UInt8) -> Bool {
            i + 2 < bytes.count && bytes[i] == UInt8(ascii: "%") && bytes[i + 1] == UInt8(ascii: "2") && (bytes[i + 2] | 0x20) == letter
        }
        /// The length of a `.` or `%2e` at `i`, or nil.
        func dot(at i: Int) -> Int? {
            if i < bytes.count && bytes[i] == UInt8(ascii: ".") { return 1 }
            return isPercent2(i, UInt8(ascii: "e")) ? 3 : nil
        }
        /// The length of a `/` or `%2f` at `i`, or nil.
        func separator(at i: Int) -> Int? {
            if i < bytes.count && bytes[i] == UInt8(ascii: "/") { return 1 }
            return isPercent2(i, UInt8(ascii: "f")) ? 3 : nil
        }
        func dotDotSegment(at start: Int) -> Bool {
            guard let first = dot(at: start), let second = dot(at: start + first) else { return false }
            let end = start + first + second
            return end == bytes.count || separator(at: end) != nil
        }
        // A segment starts at the beginning, after "/" and after "%2f".
        if dotDotSegment(at: 0) { return true }
        var index = 0
        while index < bytes.count {
            if let length = separator(at: index) {
                if dotDotSegment(at: index + length) { return true }
                index += length
            } else {
                index += 1
            }
        }
        return false
    }
}
