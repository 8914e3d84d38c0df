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

    /// Where a request under `/exapps/` goes: the app id as sent and lowercased, the path
    /// after it, and the query.
    struct AppTarget {
        let appID: String
        let id: String
        let path: String
        let query: String
    }

    /// HaRP's steps, in its order: who asks and whether they are banned, `..` in any
    /// spelling, the app id, the control plane, then AppAPI calling its ExApp (`appAPICall`)
    /// or anyone else (`userRequest`).
    private func decide(_ request: inout HTTPRequestHead, client: ClientInfo, exchange: Exchange) async -> Decided {
        // 1. Who is asking, and are they banned?
        let ip = state.clientIP(client, headers: request.headers)
        if ip != client.address { exchange.client = ip }
        if state.bans.isBanned(ip) { return refuse("ban", ip: ip, counts: false, Self.dropped, exchange) }
        // Trusted only with exactly one copy of the right key: with two, harp and a front proxy
        // could disagree on which one counts.
        let trusted = request.headers.count(of: "harp-shared-key") == 1
            && request.headers["harp-shared-key"].map { SecretComparison.equal($0, state.sharedKey) } ?? false
        let path = request.path
        // 2. `..` in any spelling.
        if PathTraversal.found(in: path) { return refuse("traversal", ip: ip, counts: !trusted, Self.dropped, exchange) }
        // 3. The app id.
        guard let (appID, targetPath) = Self.appID(in: path) else {
            if let hint = state.frontProxyHint(for: path) { return refuse("prefix_stripped", ip: ip, counts: false, (hint, "404"), exchange) }
            return refuse("no_app", ip: ip, counts: !trusted, Self.notFound, exchange)
        }
        let target = AppTarget(appID: appID, id: appID.lowercased(), path: targetPath,
                               query: request.target.utf8.firstIndex(of: UInt8(ascii: "?")).map { String(request.target[$0...]) } ?? "")
        exchange.app = target.id
        // 4. The control plane.
        if appID == "app_api" {
            guard trusted else {
                state.refusedKeys.refused(from: ip, path: path.description)
                return refuse("control_key", ip: ip, Self.unauthorized, exchange)
            }
            return await state.control.handle(&request, targetPath: targetPath, query: target.query, exchange: exchange)
        }
        if Self.isAppAPICall(request.headers) { return await appAPICall(&request, target, client: client, trusted: trusted, exchange) }
        return await userRequest(&request, target, ip: ip, trusted: trusted, exchange)
    }

    /// A failure toward `ip`'s ban (unless `counts` is false: the request carried the key, or
    /// the fault is not the client's), and why the request was refused, for the access log.
    private func refuse(_ reason: String, ip: String, counts: Bool = true, _ decided: Decided, _ exchange: Exchange) -> Decided {
        exchange.reason = reason
        if counts { state.bans.fail(ip, reason: reason) }
        return decided
    }

    /// AppAPI's calls to an ExApp carry all six of these headers.
    static func isAppAPICall(_ headers: HTTPHeaders) -> Bool {
        headers["ex-app-version"] != nil && headers["ex-app-id"] != nil && headers["ex-app-host"] != nil && headers["ex-app-port"] != nil
            && headers["authorization-app-api"] != nil && headers["harp-shared-key"] != nil
    }

    /// 5. AppAPI calling its ExApp: with the key, forwarded as it is (AppAPI signed it), to
    /// the app's record — or, before Nextcloud knows the app (its /init runs before the app
    /// is enabled), to where the headers say it is.
    private func appAPICall(_ request: inout HTTPRequestHead, _ target: AppTarget, client: ClientInfo, trusted: Bool,
                            _ exchange: Exchange) async -> Decided {
        guard trusted else {
            // Counted against the peer: AppAPI calls come straight from Nextcloud.
            state.refusedKeys.refused(from: client.address, path: request.path.description)
            return refuse("appapi_key", ip: client.address, Self.dropped, exchange)
        }
        let loop = exchange.loop, id = target.id, headers = request.headers
        let entry: ExAppEntry
        switch await state.directory.lookup(id, fetch: { await self.state.nextcloud.record(id, on: loop) }) {
        case .found(let found):
            entry = found
            exchange.context = ExAppsExchange(counters: state.metrics.app(id))
        case .unknown, .refused, .failed:
            guard let version = headers["ex-app-version"], let host = headers["ex-app-host"], let port = headers["ex-app-port"].flatMap({ Int($0) })
            else { return Self.unavailable }
            entry = await ExAppEntry.resolving(ExAppRecord(token: "", version: version, host: host, port: port, routes: []))
        }
        return forward(&request, entry, target, authorization: nil)
    }

    /// 6–9. Anyone else: the app must be known, the path must match one of its routes, the
    /// user (when the request names one) must have the route's level; then the request goes
    /// with AppAPI's signature for that user.
    private func userRequest(_ request: inout HTTPRequestHead, _ target: AppTarget, ip: String, trusted: Bool, _ exchange: Exchange) async -> Decided {
        let loop = exchange.loop, id = target.id, headers = request.headers
        // 6. The app must be known.
        let entry: ExAppEntry
        switch await state.directory.lookup(id, fetch: { await self.state.nextcloud.record(id, on: loop) }) {
        case .found(let found): entry = found
        case .unknown: return refuse("unknown_app", ip: ip, counts: !trusted, Self.notFound, exchange)
        case .refused: return refuse("nextcloud_refused_key", ip: ip, counts: false, Self.notFound, exchange)
        case .failed: return refuse("nextcloud_unavailable", ip: ip, counts: false, Self.unavailable, exchange)
        }
        var context = ExAppsExchange(counters: state.metrics.app(id))
        exchange.context = context
        let routePath = RoutePath.normalized(target.path)
        if routePath == "/heartbeat" || routePath == "/init" || routePath == "/enabled" {
            return refuse("internal_route", ip: ip, Self.dropped, exchange)
        }
        // 7. Who the user is, when the request says.
        var user: NextcloudUser?
        let cookie = Self.cookie("oc_sessionPassphrase", in: headers)
        if cookie != nil || headers["authorization"] != nil {
            let answer = await state.sessions.answer(cookie: cookie) {
                await self.state.nextcloud.user(appID: id, clientHeaders: headers, on: loop)
            }
            switch answer {
            case .user(let found):
                user = found
                exchange.user = found.id
            case .anonymous: break
            case .failed: return refuse("user_info_failed", ip: ip, counts: false, Self.unauthorized, exchange)
            }
        }
        // 8. The first route that matches the path as the ExApp will read it decides.
        guard let route = entry.record.route(for: routePath) else { return refuse("no_route", ip: ip, Self.notFound, exchange) }
        exchange.route = route.url
        if route.access != .everyone {
            guard let user, user.level >= route.access else { return refuse("forbidden", ip: ip, Self.forbidden, exchange) }
        }
        if !route.bruteforceStatuses.isEmpty {
            context.bruteforce = BruteforceWatch(ip: ip, statuses: route.bruteforceStatuses)
            exchange.context = context
        }
        // 9. AppAPI's signature: base64("<user id>:<app secret>"), the user empty when anonymous.
        let authorization = user.map { Data("\($0.id):\(entry.record.token)".utf8).base64EncodedString() } ?? entry.anonymousAuthorization
        return forward(&request, entry, target, authorization: authorization)
    }

    /// The request rewritten for the ExApp: its path without `/exapps/<appid>`, AppAPI's
    /// headers set over whatever the client sent (`authorization` nil: AppAPI's own passes).
    private func forward(_ request: inout HTTPRequestHead, _ entry: ExAppEntry, _ target: AppTarget, authorization: String?) -> Decided {
        guard let upstream = entry.upstream else { return Self.notFound }
        request.target = (target.path.isEmpty ? "/" : target.path) + target.query
        // The gateway's key is Nextcloud's and harp's alone: an ExApp never sees it (HaRP
        // passed AppAPI's copy on; a compromised app could then call the control plane).
        request.headers.remove("harp-shared-key")
        request.headers.set("EX-APP-ID", target.appID)
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
