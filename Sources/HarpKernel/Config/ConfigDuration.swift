/// A time limit in config: a number of seconds (`30`, `0.5`) or a string with a unit
/// (`"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"30d"`). Written back as a string with a unit.
public struct ConfigDuration: Codable, Sendable, Equatable, CustomStringConvertible {
    public let duration: Duration

    public init(_ duration: Duration) { self.duration = duration }

    public static func seconds(_ value: Int) -> ConfigDuration { .init(.seconds(value)) }
    public static func milliseconds(_ value: Int) -> ConfigDuration { .init(.milliseconds(value)) }

    static let allowed = "a duration such as 30, 0.5, \"250ms\", \"30s\", \"5m\", \"1h\" or \"30d\""

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self) {
            guard let parsed = Self.parse(text) else { throw ConfigValueProblem("expected \(Self.allowed)") }
            self = parsed
        } else if let seconds = try? container.decode(Double.self), seconds >= 0, seconds.isFinite {
            duration = .milliseconds(Int64((seconds * 1000).rounded()))
        } else {
            throw ConfigValueProblem("expected \(Self.allowed)")
        }
    }

    static func parse(_ text: String) -> ConfigDuration? {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            guard let number = Double(text.dropLast(suffix.count)), number >= 0, number.isFinite else { return nil }
            return ConfigDuration(.milliseconds(Int64((number * scale * 1000).rounded())))
        }
        return nil
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    public var description: String {
        let milliseconds = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
        if milliseconds % 86_400_000 == 0 && milliseconds > 0 { return "\(milliseconds / 86_400_000)d" }
        if milliseconds % 3_600_000 == 0 && milliseconds > 0 { return "\(milliseconds / 3_600_000)h" }
        if milliseconds % 60_000 == 0 && milliseconds > 0 { return "\(milliseconds / 60_000)m" }
        if milliseconds % 1000 == 0 { return "\(milliseconds / 1000)s" }
        return "\(milliseconds)ms"
    }
}

extension SocketAddress: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do {
            try self.init(parsing: text)
        } catch {
            throw ConfigValueProblem("\(error.reason); expected \(SocketAddress.allowedForms)")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
