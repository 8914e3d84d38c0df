/// Decodes a `Decodable` config section from a `ConfigValue` tree with errors a user can act
/// on, and rejects keys the section does not know.
///
/// Unknown keys: every table the decoded type opens records which keys it asked for (the
/// synthesized `init(from:)` asks for each of its coding keys, optional ones included); a key
/// present in the file that nobody asked for is an error listing the keys that are allowed.
public enum ConfigDecoder {
    public static func decode<T: Decodable>(_ type: T.Type, from value: ConfigValue, path: String) throws(ConfigError) -> T {
        let state = DecodingState()
        let decoder = ValueDecoder(value: value, path: path, codingPath: [], state: state)
        do {
            let result = try T(from: decoder)
            try state.checkUnknownKeys()
            return result
        } catch let error as ConfigError {
            // A misspelt key usually also makes a required one "missing": name the misspelling.
            try state.checkUnknownKeys()
            throw error
        } catch {
            throw ConfigError.invalid(key: path, value: value.inlineTOML, reason: "\(error)")
        }
    }
}

final class DecodingState {
    final class TableUse {
        let path: String
        let present: [String]
        var asked: [String] = []
        init(path: String, present: [String]) {
            self.path = path
            self.present = present
        }
    }

    var tables: [TableUse] = []

    func checkUnknownKeys() throws(ConfigError) {
        for table in tables {
            if let unknown = table.present.first(where: { !table.asked.contains($0) }) {
                throw .unknownKey(key: ValueDecoder.join(table.path, unknown), allowed: table.asked)
            }
        }
    }
}

struct ValueDecoder: Decoder {
    let value: ConfigValue
    let path: String
    let codingPath: [any CodingKey]
    let state: DecodingState
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    static func join(_ path: String, _ key: String) -> String {
        path.isEmpty ? key : "\(path).\(key)"
    }

    func invalid(_ expected: String) -> ConfigError {
        .invalid(key: path, value: value.inlineTOML, reason: "expected \(expected), found \(value.kindName)")
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .table(let entries) = value else { throw invalid("a table") }
        let use = DecodingState.TableUse(path: path, present: entries.map(\.0))
        // Keys enums that are CaseIterable list every allowed key up front, so an unknown-key
        // error can name them all even when decoding stopped early.
        if let all = Key.self as? any (CodingKey & CaseIterable).Type {
            use.asked = Self.keyNames(all)
        }
        state.tables.append(use)
        return KeyedDecodingContainer(Keyed<Key>(decoder: self, use: use))
    }

    private static func keyNames<K: CodingKey & CaseIterable>(_ type: K.Type) -> [String] {
        K.allCases.map(\.stringValue)
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let items) = value else { throw invalid("an array") }
        return Unkeyed(decoder: self, items: items)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { Single(decoder: self) }

    func child(_ value: ConfigValue, path: String, key: any CodingKey) -> ValueDecoder {
        ValueDecoder(value: value, path: path, codingPath: codingPath + [key], state: state)
    }

    /// Decodes `T` from this value; a type's own complaint gets the key and value attached.
    func decodeValue<T: Decodable>(_ type: T.Type) throws -> T {
        switch type {
        case is String.Type:
            guard case .string(let text) = value else { throw invalid("a string") }
            return text as! T
        case is Bool.Type:
            guard case .bool(let flag) = value else { throw invalid("true or false") }
            return flag as! T
        case let integerType as any FixedWidthInteger.Type:
            guard case .integer(let number) = value else { throw invalid("an integer") }
            guard let fitted = integerType.init(exactly: number) else {
                throw ConfigError.invalid(key: path, value: value.inlineTOML,
                                          reason: "expected an integer from \(integerType.min) to \(integerType.max)")
            }
            return fitted as! T
        case let floatType as any BinaryFloatingPoint.Type:
            switch value {
            case .integer(let number): return floatType.init(number) as! T
            case .float(let number): return floatType.init(number) as! T
            default: throw invalid("a number")
            }
        default:
            do {
                return try T(from: self)
            } catch let problem as ConfigValueProblem {
                throw ConfigError.invalid(key: path, value: value.inlineTOML, reason: problem.explanation)
            }
        }
    }

    struct Keyed<Key: CodingKey>: KeyedDecodingContainerProtocol {
        let decoder: ValueDecoder
        let use: DecodingState.TableUse
        var codingPath: [any CodingKey] { decoder.codingPath }
        var allKeys: [Key] { use.present.compactMap(Key.init(stringValue:)) }

        func contains(_ key: Key) -> Bool {
            note(key)
            return decoder.value[key.stringValue] != nil
        }

        private func note(_ key: Key) {
            if !use.asked.contains(key.stringValue) { use.asked.append(key.stringValue) }
        }

        private func entry(_ key: Key) throws -> ValueDecoder {
            note(key)
            let path = ValueDecoder.join(decoder.path, key.stringValue)
            guard let value = decoder.value[key.stringValue] else {
                throw ConfigError.missingKey(key: path, expected: "a value")
            }
            return decoder.child(value, path: path, key: key)
        }

        func decodeNil(forKey key: Key) throws -> Bool { !contains(key) }

        func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
            try entry(key).decodeValue(type)
        }

        func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
            guard contains(key) else { return nil }
            return try entry(key).decodeValue(type)
        }

        func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
            try entry(key).container(keyedBy: type)
        }

        func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
            try entry(key).unkeyedContainer()
        }

        func superDecoder() throws -> any Decoder { decoder }
        func superDecoder(forKey key: Key) throws -> any Decoder { try entry(key) }
    }

    struct Unkeyed: UnkeyedDecodingContainer {
        let decoder: ValueDecoder
        let items: [ConfigValue]
        var currentIndex = 0
        var codingPath: [any CodingKey] { decoder.codingPath }
        var count: Int? { items.count }
        var isAtEnd: Bool { currentIndex >= items.count }

        struct Index: CodingKey {
            let intValue: Int?
            var stringValue: String { "\(intValue!)" }
            init(_ index: Int) { intValue = index }
            init?(stringValue: String) { nil }
            init?(intValue: Int) { self.intValue = intValue }
        }

        private mutating func next() throws -> ValueDecoder {
            guard !isAtEnd else { throw ConfigError.missingKey(key: "\(decoder.path)[\(currentIndex)]", expected: "another element") }
            defer { currentIndex += 1 }
            return decoder.child(items[currentIndex], path: "\(decoder.path)[\(currentIndex)]", key: Index(currentIndex))
        }

        mutating func decodeNil() throws -> Bool { false }
        mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try next().decodeValue(type) }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
            try next().container(keyedBy: type)
        }
        mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer { try next().unkeyedContainer() }
        mutating func superDecoder() throws -> any Decoder { try next() }
    }

    struct Single: SingleValueDecodingContainer {
        let decoder: ValueDecoder
        var codingPath: [any CodingKey] { decoder.codingPath }
        func decodeNil() -> Bool { false }
        func decode<T: Decodable>(_ type: T.Type) throws -> T { try decoder.decodeValue(type) }
    }
}
