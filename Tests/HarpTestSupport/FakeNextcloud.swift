import Foundation
import Synchronization

/// Nextcloud's AppAPI as HaRP sees it (app_api's HarpController): `exapp-meta` and
/// `user-info` under `/index.php/apps/app_api/harp/`, checking `harp-shared-key`, with
/// records and sessions the test sets, and every call recorded.
public final class FakeNextcloud: Sendable {
    public struct Call: Sendable {
        public let endpoint: String
        public let appID: String
        public let headers: [(String, String)]
        public func header(_ name: String) -> String? { headers.last { $0.0 == name.lowercased() }?.1 }
    }

    public let server: TinyHTTPServer
    public let sharedKey: String
    private let store = Store()
    /// Milliseconds each answer waits (a slow Nextcloud; concurrent misses pile up meanwhile).
    public func setDelay(_ milliseconds: Int) { store.delay.store(milliseconds, ordering: .relaxed) }
    /// While set, every call gets 500.
    public func setFailing(_ failing: Bool) { store.failing.store(failing, ordering: .relaxed) }

    final class Store: Sendable {
        let records = Mutex<[String: String]>([:])
        /// Cookie `oc_sessionPassphrase` value or whole Authorization header → (user id, level).
        let sessions = Mutex<[String: (String, Int)]>([:])
        let recorded = Mutex<[Call]>([])
        let delay = Atomic<Int>(0)
        let failing = Atomic<Bool>(false)
    }

    public init(sharedKey: String) throws {
        self.sharedKey = sharedKey
        let store = self.store
        server = try TinyHTTPServer { request in
            let endpoint = request.path.replacingOccurrences(of: "/index.php/apps/app_api/harp/", with: "")
            let appID = request.query("appId") ?? ""
            store.recorded.withLock { $0.append(Call(endpoint: endpoint, appID: appID, headers: request.headers)) }
            let wait = store.delay.load(ordering: .relaxed)
            if wait > 0 { usleep(UInt32(wait) * 1000) }
            if store.failing.load(ordering: .relaxed) { return .json(500, #"{"message":"Internal Server Error"}"#) }
            let unauthorized = TinyHTTPServer.Response.json(401, #"{"message":"Harp shared key is not valid"}"#)
            switch endpoint {
            case "/status.php":
                return .json(200, #"{"installed":true,"maintenance":false,"versionstring":"32.0.1"}"#)
            case "exapp-meta":
                guard request.header("harp-shared-key") == sharedKey, let record = store.records.withLock({ $0[appID] }) else { return unauthorized }
                return .json(200, record)
            case "user-info":
                guard request.header("harp-shared-key") == sharedKey, store.records.withLock({ $0[appID] }) != nil else { return unauthorized }
                let cookie = request.header("cookie")?.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
                    .first { $0.hasPrefix("oc_sessionPassphrase=") }.map { String($0.dropFirst("oc_sessionPassphrase=".count)) }
                let key = cookie ?? request.header("authorization") ?? ""
                guard let (user, level) = store.sessions.withLock({ $0[key] }) else { return .json(200, #"{"user_id":"","access_level":0}"#) }
                return .json(200, #"{"user_id":"\#(user)","access_level":\#(level)}"#)
            default:
                return .json(404, #"{"message":"not found"}"#)
            }
        }
    }

    public var url: String { "http://\(server.address)" }

    /// Makes AppAPI know `appID` with this exapp-meta JSON.
    public func register(_ appID: String, json: String) { store.records.withLock { $0[appID] = json } }
    public func unregister(_ appID: String) { store.records.withLock { _ = $0.removeValue(forKey: appID) } }

    /// A record in exapp-meta's shape: routes as (url regex, access level, bruteforce statuses).
    public static func record(token: String, version: String = "1.0.0", host: String = "127.0.0.1", port: Int,
                              routes: [(String, Int, [Int])]) -> String {
        let list = routes.map { url, level, statuses in
            #"{"url":"\#(url.replacingOccurrences(of: "\\", with: "\\\\"))","access_level":\#(level),"bruteforce_protection":\#(statuses)}"#
        }
        return #"{"exapp_token":"\#(token)","exapp_version":"\#(version)","host":"\#(host)","port":\#(port),"routes":[\#(list.joined(separator: ","))]}"#
    }

    /// A logged-in session: by cookie value, or by the whole Authorization header.
    public func login(_ key: String, user: String, level: Int) { store.sessions.withLock { $0[key] = (user, level) } }

    public var calls: [Call] { store.recorded.withLock { $0 } }
    public func calls(_ endpoint: String) -> [Call] { calls.filter { $0.endpoint == endpoint } }
    public func resetCalls() { store.recorded.withLock { $0.removeAll() } }

    public func stop() { server.stop() }
}
