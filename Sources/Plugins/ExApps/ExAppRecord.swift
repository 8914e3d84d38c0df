import Foundation
import HTTPProxy
import HarpKernel

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
        guard let port = Self.integer(object["port"]), (0...65535).contains(port) else {
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

    /// An integer, or a string holding one (never a fraction).
    private static func integer(_ value: Any?) -> Int? {
        if let number = value as? NSNumber {
            let double = number.doubleValue
            return double == double.rounded() ? Int(exactly: double) : nil
        }
        if let text = value as? String { return Int(text) }
        return nil
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

    /// A pattern that does not compile matches nothing (HaRP logs and skips it).
    func matches(_ targetPath: String) -> Bool { pattern?.matchesPrefix(of: targetPath) ?? false }
}

/// A route's regular expression, compiled once when the record arrives. Most routes are a
/// literal prefix (`^/api/`, `ws`) or match everything (`.*`): those skip the regex engine,
/// which cost ~2% of harp's CPU per request at 23k req/s.
final class RoutePattern: @unchecked Sendable {
    // @unchecked Sendable: the regex is never mutated after init; it is compiled eagerly
    // here (the first match below), so threads only read its program afterwards.
    private let regex: Regex<AnyRegexOutput>
    /// The bytes a match must start with, when the pattern is only that (after `^`, with
    /// `\/` and `\.` unescaped); `matchesAll` for `.*`, `^.*` and "".
    private let literal: [UInt8]?
    private let matchesAll: Bool

    init?(_ text: String) {
        guard let regex = try? Regex(text) else { return nil }
        self.regex = regex
        matchesAll = text == ".*" || text.isEmpty || text == "^.*"
        literal = Self.literalPrefix(text)
        _ = try? regex.prefixMatch(in: "")
    }

    /// `^/api/v1` → "/api/v1"; nil when the pattern has any other regex syntax.
    static func literalPrefix(_ text: String) -> [UInt8]? {
        var bytes = Array(text.utf8)
        if bytes.first == UInt8(ascii: "^") { bytes.removeFirst() }
        var out: [UInt8] = []
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\\") {
                guard index + 1 < bytes.count, [UInt8(ascii: "/"), UInt8(ascii: "."), UInt8(ascii: "-")].contains(bytes[index + 1]) else { return nil }
                out.append(bytes[index + 1])
                index += 2
                continue
            }
            guard byte >= 0x20, byte < 0x7f, !Array("^$.|?*+()[]{}".utf8).contains(byte) else { return nil }
            out.append(byte)
            index += 1
        }
        return out
    }

    func matchesPrefix(of path: String) -> Bool {
        if matchesAll { return true }
        if let literal { return path.utf8.starts(with: literal) }
        return (try? regex.prefixMatch(in: path)) != nil
    }
}
