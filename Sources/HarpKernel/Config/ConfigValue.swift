import TOMLKit

/// A parsed configuration value, independent of the TOML library: decoding, unknown-key
/// checks, environment overrides and `harp config check` output all work on this tree.
public indirect enum ConfigValue: Equatable, Sendable {
    case string(String)
    case integer(Int)
    case float(Double)
    case bool(Bool)
    case array([ConfigValue])
    /// Keys keep the order in which they were written or encoded.
    case table([(String, ConfigValue)])

    public static func == (lhs: ConfigValue, rhs: ConfigValue) -> Bool {
        switch (lhs, rhs) {
        case (.string(let a), .string(let b)): a == b
        case (.integer(let a), .integer(let b)): a == b
        case (.float(let a), .float(let b)): a == b
        case (.bool(let a), .bool(let b)): a == b
        case (.array(let a), .array(let b)): a == b
        case (.table(let a), .table(let b)): a.map(\.0) == b.map(\.0) && a.map(\.1) == b.map(\.1)
        default: false
        }
    }

    /// Parses TOML text. Syntax errors carry the line and column.
    public static func parse(toml text: String, source: String) throws(ConfigError) -> ConfigValue {
        do {
            return ConfigValue(try TOMLTable(string: text))
        } catch let error as TOMLParseError {
            throw .syntax(source: source, line: error.source.begin.line, column: error.source.begin.column,
                          message: error.description)
        } catch {
            throw .syntax(source: source, line: 0, column: 0, message: "\(error)")
        }
    }

    init(_ table: TOMLTable) {
        self = .table(table.keys.compactMap { key in table[key].flatMap(ConfigValue.init).map { (key, $0) } })
    }

    init?(_ value: any TOMLValueConvertible) {
        switch value.type {
        case .table: self.init(value.table!)
        case .array: self = .array(value.array!.compactMap(ConfigValue.init))
        case .string: self = .string(value.string!)
        case .int: self = .integer(value.int!)
        case .double: self = .float(value.double!)
        case .bool: self = .bool(value.bool!)
        default: self = .string(value.debugDescription)  // dates and times: kept as text
        }
    }

    public subscript(key: String) -> ConfigValue? {
        guard case .table(let entries) = self else { return nil }
        return entries.first { $0.0 == key }?.1
    }

    /// Sets `key` in a table (replacing an existing value in place).
    public mutating func set(_ key: String, _ value: ConfigValue) {
        guard case .table(var entries) = self else { return }
        if let index = entries.firstIndex(where: { $0.0 == key }) {
            entries[index].1 = value
        } else {
            entries.append((key, value))
        }
        self = .table(entries)
    }

    /// What kind of value this is, in the words an error message uses.
    public var kindName: String {
        switch self {
        case .string: "a string"
        case .integer: "an integer"
        case .float: "a number"
        case .bool: "a boolean"
        case .array: "an array"
        case .table: "a table"
        }
    }

    /// The value as TOML writes it inline (used in error messages and for scalars in output).
    public var inlineTOML: String {
        switch self {
        case .string(let text): ConfigValue.quote(text)
        case .integer(let value): "\(value)"
        case .float(let value): "\(value)"
        case .bool(let value): "\(value)"
        case .array(let items): "[" + items.map(\.inlineTOML).joined(separator: ", ") + "]"
        case .table(let entries): "{ " + entries.map { "\(ConfigValue.key($0.0)) = \($0.1.inlineTOML)" }.joined(separator: ", ") + " }"
        }
    }

    static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7f {
                    out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    static func key(_ key: String) -> String {
        key.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }) && !key.isEmpty ? key : quote(key)
    }

    /// The whole document as TOML: scalars first, then sub-tables, then arrays of tables.
    public func renderTOML(path: [String] = []) -> String {
        guard case .table(let entries) = self else { return inlineTOML }
        var out = ""
        let isTableArray: (ConfigValue) -> Bool = {
            if case .array(let items) = $0, !items.isEmpty, items.allSatisfy({ if case .table = $0 { true } else { false } }) { return true }
            return false
        }
        let isTable: (ConfigValue) -> Bool = { if case .table = $0 { true } else { false } }
        for (key, value) in entries where !isTable(value) && !isTableArray(value) {
            out += "\(ConfigValue.key(key)) = \(value.inlineTOML)\n"
        }
        for (key, value) in entries where isTable(value) {
            let sub = path + [key]
            out += "\n[\(sub.map(ConfigValue.key).joined(separator: "."))]\n" + value.renderTOML(path: sub)
        }
        for (key, value) in entries where isTableArray(value) {
            guard case .array(let items) = value else { continue }
            let sub = path + [key]
            for item in items {
                out += "\n[[\(sub.map(ConfigValue.key).joined(separator: "."))]]\n" + item.renderTOML(path: sub)
            }
        }
        return out
    }
}
