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

    public init(_ path: [String], _ value: ConfigValue) {
        precondition(!path.isEmpty, "an override needs a key")
        self.path = path
        self.value = value
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
