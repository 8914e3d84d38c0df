/// Encodes a config section back into a `ConfigValue` tree, so that `harp config check` can
/// print the effective configuration (defaults filled in) as TOML.
public enum ConfigEncoder {
    public static func encode<T: Encodable>(_ value: T) -> ConfigValue {
        let box = Box()
        try? ValueEncoder.encode(value, into: box, codingPath: [])
        return box.resolved ?? .table([])
    }
}

/// A slot a container writes into; nested containers write into child slots that are
/// resolved when the parent reads them back.
private final class Box {
    var value: ConfigValue?
    var keyed: [(String, Box)]?
    var unkeyed: [Box]?

    var resolved: ConfigValue? {
        if let keyed { return .table(keyed.compactMap { key, box in box.resolved.map { (key, $0) } }) }
        if let unkeyed { return .array(unkeyed.compactMap(\.resolved)) }
        return value
    }
}

private struct ValueEncoder: Encoder {
    let box: Box
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if box.keyed == nil { box.keyed = [] }
        return KeyedEncodingContainer(Keyed<Key>(box: box, codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        if box.unkeyed == nil { box.unkeyed = [] }
        return Unkeyed(box: box, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { Single(box: box, codingPath: codingPath) }

    static func scalar<T: Encodable>(_ value: T) -> ConfigValue? {
        switch value {
        case let text as String: .string(text)
        case let flag as Bool: .bool(flag)
        case let number as any BinaryInteger: .integer(Int(number))
        case let number as any BinaryFloatingPoint: .float(Double(number))
        default: nil
        }
    }

    static func encode<T: Encodable>(_ value: T, into box: Box, codingPath: [any CodingKey]) throws {
        if let scalar = scalar(value) {
            box.value = scalar
        } else {
            try value.encode(to: ValueEncoder(box: box, codingPath: codingPath))
        }
    }

    struct Keyed<Key: CodingKey>: KeyedEncodingContainerProtocol {
        let box: Box
        let codingPath: [any CodingKey]

        private func slot(_ key: Key) -> Box {
            let child = Box()
            box.keyed!.removeAll { $0.0 == key.stringValue }
            box.keyed!.append((key.stringValue, child))
            return child
        }

        mutating func encodeNil(forKey key: Key) {}
        mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
            try ValueEncoder.encode(value, into: slot(key), codingPath: codingPath + [key])
        }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
            ValueEncoder(box: slot(key), codingPath: codingPath + [key]).container(keyedBy: type)
        }
        mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
            ValueEncoder(box: slot(key), codingPath: codingPath + [key]).unkeyedContainer()
        }
        mutating func superEncoder() -> any Encoder { ValueEncoder(box: box, codingPath: codingPath) }
        mutating func superEncoder(forKey key: Key) -> any Encoder { ValueEncoder(box: slot(key), codingPath: codingPath + [key]) }
    }

    struct Unkeyed: UnkeyedEncodingContainer {
        let box: Box
        let codingPath: [any CodingKey]
        var count: Int { box.unkeyed!.count }

        private func slot() -> Box {
            let child = Box()
            box.unkeyed!.append(child)
            return child
        }

        mutating func encodeNil() {}
        mutating func encode<T: Encodable>(_ value: T) throws {
            try ValueEncoder.encode(value, into: slot(), codingPath: codingPath)
        }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
            ValueEncoder(box: slot(), codingPath: codingPath).container(keyedBy: type)
        }
        mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
            ValueEncoder(box: slot(), codingPath: codingPath).unkeyedContainer()
        }
        mutating func superEncoder() -> any Encoder { ValueEncoder(box: slot(), codingPath: codingPath) }
    }

    struct Single: SingleValueEncodingContainer {
        let box: Box
        let codingPath: [any CodingKey]
        mutating func encodeNil() {}
        mutating func encode<T: Encodable>(_ value: T) throws {
            try ValueEncoder.encode(value, into: box, codingPath: codingPath)
        }
    }
}
