/// A configuration problem, phrased so that a user can fix it: the key, the value and what is
/// allowed. Every one of these stops `harp serve` before anything listens.
public enum ConfigError: Error, Equatable, CustomStringConvertible {
    case syntax(source: String, line: Int, column: Int, message: String)
    case unknownKey(key: String, allowed: [String])
    case missingKey(key: String, expected: String)
    case invalid(key: String, value: String, reason: String)
    case unreadable(path: String, reason: String)
    case plugins(String)
    /// An environment variable that configures harp (HaRP's `HP_*`) is missing or wrong.
    case environment(variable: String, reason: String)

    public var description: String {
        switch self {
        case .syntax(let source, let line, let column, let message):
            "config error: \(source):\(line):\(column): \(message)"
        case .unknownKey(let key, let allowed):
            "config error: unknown key \(key); allowed here: \(allowed.isEmpty ? "none" : allowed.joined(separator: ", "))"
        case .missingKey(let key, let expected):
            "config error: \(key) is missing; expected \(expected)"
        case .invalid(let key, let value, let reason):
            "config error: \(key) = \(value) is invalid: \(reason)"
        case .unreadable(let path, let reason):
            "config error: cannot read \(path): \(reason)"
        case .plugins(let message):
            "config error: \(message)"
        case .environment(let variable, let reason):
            "config error: environment variable \(variable): \(reason)"
        }
    }
}

/// Thrown by a config value type's `init(from:)` to say what was wrong and what is allowed;
/// the decoder adds the key and the value the user wrote.
public struct ConfigValueProblem: Error {
    public let explanation: String
    public init(_ explanation: String) { self.explanation = explanation }
}
