import Foundation
import HTTPProxy
import HarpKernel
import Logging

/// What Nextcloud's AppAPI knows of one ExApp (`exapp-meta`, or pushed by `/exapp_storage`):
/// its secret, version, where it listens, and its routes with their access levels.
struct ExAppRecord: Sendable {
    let token: String
    let version: String
    let host: String
    let port: Int
    let routes: [ExAppRoute]

    /// Decodes the JSON AppAPI sends. Lenient where AppAPI is (a database driver may give
    /// `access_level` or `port` as a numeric string); strict where a wrong type would mean a
    /// wrong decision. nil with the reason when it is not a record.
    static func decode(_ body: [UInt8]) -> Result<ExAppRecord, RecordProblem> {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] else {
            return .failure(RecordProblem("not a JSON object"))
        }
        guard let token = object["exapp_token"] as? String else { return .failure(RecordProblem("exapp_token: expected a string")) }
        guard let version = object["exapp_version"] as? String else { return .failure(RecordProblem("exapp_version: expected a string")) }
        guard let host = object["host"] as? String else { return .failure(RecordProblem("host: expected a string")) }
        guard let port = Self.integer(object["port"]), (1...65535).contains(port) else {
            return .failure(RecordProblem("port: expected a port number"))
        }
        var routes: [ExAppRoute] = []
        if let list = object["routes"] {
            guard let list = list as? [Any] else { return .failure(RecordProblem("routes: expected a list")) }
            for (index, item) in list.enumerated() {
                guard let route = item as? [String: Any], let url = route["url"] as? String else {
                    return .failure(RecordProblem("routes[\(index)].url: expected a string"))
                }
                guard let level = Self.integer(route["access_level"]), let access = AccessLevel(rawValue: level) else {
                    return .failure(RecordProblem("routes[\(index)].access_level: expected 0, 1 or 2"))
                }
                var statuses: [Int] = []
                if let list = route["bruteforce_protection"], !(list is NSNull) {
                    guard let values = list as? [Any] else {
                        return .failure(RecordProblem("routes[\(index)].bruteforce_protection: expected a list of statuses"))
                    }
                    for value in values {
                        guard let status = Self.integer(value) else {
                            return .failure(RecordProblem("routes[\(index)].bruteforce_protection: expected a list of statuses"))
                        }
                        statuses.append(status)
                    }
                }
                routes.append(ExAppRoute(url: url, access: access, bruteforceStatuses: statuses))
            }
        }
        return .success(ExAppRecord(token: token, version: version, host: host, port: port, routes: routes))
    }

    /// An integer, or a string holding one (never a fraction, never a JSON true/false).
    static func integer(_ value: Any?) -> Int? {
        if let number = value as? NSNumber, !Self.isBoolean(number) {
            let double = number.doubleValue
            return double == double.rounded() ? Int(exactly: double) : nil
        }
        if let text = value as? String { return Int(text) }
        return nil
    }

    /// JSON's true and false arrive as NSNumbers too; Foundation marks them with the C type
    /// `c` (char) where numbers from JSON are `q` (Int64) or `d` (Double).
    private static func isBoolean(_ number: NSNumber) -> Bool {
        String(cString: number.objCType) == "c"
    }

    /// Routes whose pattern harp cannot match safely match nothing; says so once per record.
    func logUnusableRoutes(appID: String, logger: Logger) {
        for route in routes where !route.isUsable {
            logger.warning("an ExApp route's pattern is invalid, or needs what harp cannot match in linear time (lookaround, a back-reference): the route matches nothing",
                           metadata: ["app": "\(appID)", "url": "\(route.url)"])
        }
    }

    /// The first route whose pattern matches at the start of `targetPath` (Python's
    /// `re.match`, as HaRP does); the method is not checked.
    func route(for targetPath: String) -> ExAppRoute? {
        routes.first { $0.matches(targetPath) }
    }
}

struct RecordProblem: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Who may use a route: PUBLIC (anyone), USER (a Nextcloud user), ADMIN.
enum AccessLevel: Int, Sendable, Comparable {
    case everyone = 0, user = 1, admin = 2
    static func < (a: AccessLevel, b: AccessLevel) -> Bool { a.rawValue < b.rawValue }
}

struct ExAppRoute: Sendable {
    let url: String
    let access: AccessLevel
    /// Upstream statuses that count as a failure for the client's IP (a wrong password).
    let bruteforceStatuses: [Int]
    private let pattern: RoutePattern?

    init(url: String, access: AccessLevel, bruteforceStatuses: [Int]) {
        self.url = url
        self.access = access
        self.bruteforceStatuses = bruteforceStatuses
        pattern = RoutePattern(url)
    }

    /// A pattern harp cannot compile matches nothing (HaRP logs and skips it too).
    func matches(_ targetPath: String) -> Bool { pattern?.matchesPrefix(of: targetPath) ?? false }

    /// Whether the pattern could be compiled (the record's arrival logs those that cannot).
    var isUsable: Bool { pattern != nil }
}
