import Glibc

/// One setting made by an environment variable, over whatever the config file says: HaRP is
/// configured by `HP_*` variables, and an admin who swaps its container for harp keeps them.
/// Plugins turn their variables into overrides (`Plugin.environmentOverrides`); the kernel
/// applies them to the document before any section is decoded, so the usual validation and
/// error messages apply to them as to the file.
public struct ConfigOverride: Sendable, Equatable {
    /// Where the value goes: `["exapps", "shared_key"]`, `["harp", "log_level"]`.
    public let path: [String]
    public let value: ConfigValue
    /// The environment variable the admin set (`HP_EXAPPS_ADDRESS`), named in errors about
    /// the key beside the key itself.
    public let variable: String?

    public init(_ path: [String], _ value: ConfigValue, from variable: String? = nil) {
        precondition(!path.isEmpty, "an override needs a key")
        self.path = path
        self.value = value
        self.variable = variable
    }
}

/// Which keys environment variables set, so that a message about a key names what the admin
/// actually wrote: `exapps.listen[0] (HP_EXAPPS_ADDRESS)`.
public struct ConfigOrigins: Sendable, Equatable {
    /// Dotted key (`exapps.listen`) → variable.
    public private(set) var variables: [String: String] = [:]

    public init() {}

    mutating func record(_ override: ConfigOverride) {
        if let variable = override.variable { variables[override.path.joined(separator: ".")] = variable }
    }

    /// `key`, followed by the variable that set it or a key it lies under.
    public func describe(_ key: String) -> String {
        var prefix = Substring(key)
        while !prefix.isEmpty {
            if let variable = variables[String(prefix)] { return "\(key) (\(variable))" }
            guard let cut = prefix.lastIndex(where: { $0 == "." || $0 == "[" }) else { break }
            prefix = prefix[..<cut]
        }
        return key
    }
}

/// The process environment, read once (Foundation-free: the kernel does not link it).
public enum ProcessEnvironment {
    public static func current() -> [String: String] {
        var result: [String: String] = [:]
        var entry = environ
        while let pointer = entry.pointee {
            let text = String(cString: pointer)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            entry += 1
        }
        return result
    }
}

extension ConfigValue {
    /// This table with `value` at `path` (tables on the way are made when missing).
    func setting(_ path: ArraySlice<String>, to value: ConfigValue) -> ConfigValue {
        guard let key = path.first else { return value }
        var entries: [(String, ConfigValue)] = []
        if case .table(let existing) = self { entries = existing }
        if let index = entries.firstIndex(where: { $0.0 == key }) {
            entries[index].1 = entries[index].1.setting(path.dropFirst(), to: value)
        } else {
            entries.append((key, ConfigValue.table([]).setting(path.dropFirst(), to: value)))
        }
        return .table(entries)
    }
}
