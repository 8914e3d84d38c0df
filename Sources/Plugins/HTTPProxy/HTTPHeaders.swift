/// Header fields in arrival order, names as sent. Lookups are case-insensitive (RFC 9110 §5.1);
/// names the proxy uses are recognised on entry (`KnownField`) and found by that tag.
public struct HTTPHeaders: Sendable, Sequence {
    public struct Field: Sendable {
        public let name: String
        public var value: String
        let known: KnownField?

        init(_ name: String, _ value: String, known: KnownField?) {
            self.name = name
            self.value = value
            self.known = known
        }

        func matches(_ key: Key) -> Bool {
            switch key {
            case .known(let field): known == field
            case .other(let name): known == nil && self.name.equalsIgnoringASCIICase(name)
            }
        }
    }

    /// A name to look up, recognised once per lookup rather than once per field compared.
    enum Key {
        case known(KnownField)
        case other(String)

        init(_ name: String) { self = KnownField(name: name).map(Key.known) ?? .other(name) }
    }

    public private(set) var fields: [Field] = []

    public init(_ fields: [(name: String, value: String)] = []) {
        for (name, value) in fields { add(name, value) }
    }

    public func makeIterator() -> IndexingIterator<[Field]> { fields.makeIterator() }

    public mutating func add(_ name: String, _ value: String) {
        fields.append(Field(name, value, known: KnownField(name: name)))
    }

    public mutating func add(_ field: KnownField, _ value: String) {
        fields.append(Field(field.name, value, known: field))
    }

    /// Replaces every field named `name` with one field.
    public mutating func set(_ name: String, _ value: String) {
        remove(name)
        add(name, value)
    }

    public mutating func set(_ field: KnownField, _ value: String) {
        remove(field)
        add(field, value)
    }

    public mutating func remove(_ name: String) { remove(Key(name)) }
    public mutating func remove(_ field: KnownField) { remove(.known(field)) }
    private mutating func remove(_ key: Key) {
        // Most removals find nothing: don't touch (and copy) the array then.
        guard fields.contains(where: { $0.matches(key) }) else { return }
        fields.removeAll { $0.matches(key) }
    }

    public mutating func removeAll(where shouldRemove: (Field) -> Bool) {
        guard fields.contains(where: shouldRemove) else { return }
        fields.removeAll(where: shouldRemove)
    }

    /// The first value of `name`.
    public subscript(name: String) -> String? { first(Key(name)) }
    public subscript(field: KnownField) -> String? { first(.known(field)) }
    private func first(_ key: Key) -> String? { fields.first { $0.matches(key) }?.value }

    /// Every value of `name`, with comma-separated lists split and trimmed (RFC 9110 §5.3).
    public func values(_ name: String) -> [Substring] { values(Key(name)) }
    public func values(_ field: KnownField) -> [Substring] { values(.known(field)) }
    private func values(_ key: Key) -> [Substring] {
        var all: [Substring] = []
        forEachValue(key) { all.append($0); return true }
        return all
    }

    /// True when a comma-separated header contains `token` (case-insensitive).
    public func contains(_ name: String, token: String) -> Bool { contains(Key(name), token: token) }
    public func contains(_ field: KnownField, token: String) -> Bool { contains(.known(field), token: token) }
    private func contains(_ key: Key, token: String) -> Bool {
        var found = false
        forEachValue(key) { value in
            found = value.equalsIgnoringASCIICase(token)
            return !found
        }
        return found
    }

    public func count(of name: String) -> Int { count(Key(name)) }
    public func count(of field: KnownField) -> Int { count(.known(field)) }
    private func count(_ key: Key) -> Int { fields.count { $0.matches(key) } }

    /// Calls `body` with each list element of `key`'s fields, without collecting them, until
    /// it returns false.
    func forEachValue(_ field: KnownField, _ body: (Substring) -> Bool) { forEachValue(.known(field), body) }
    private func forEachValue(_ key: Key, _ body: (Substring) -> Bool) {
        for field in fields where field.matches(key) {
            var rest = Substring(field.value)
            while let comma = rest.utf8.firstIndex(of: UInt8(ascii: ",")) {
                guard body(rest[..<comma].trimmingOWS()) else { return }
                rest = rest[rest.utf8.index(after: comma)...]
            }
            guard body(rest.trimmingOWS()) else { return }
        }
    }
}

extension StringProtocol {
    func equalsIgnoringASCIICase<Other: StringProtocol>(_ other: Other) -> Bool {
        let a = utf8, b = other.utf8
        guard a.count == b.count else { return false }
        var j = b.startIndex
        for x in a {
            let y = b[j]
            if x != y {
                let lower = x | 0x20
                guard lower == y | 0x20, lower >= 0x61, lower <= 0x7a else { return false }
            }
            j = b.index(after: j)
        }
        return true
    }

    /// Without leading and trailing spaces and tabs (optional whitespace, RFC 9110 §5.6.3).
    func trimmingOWS() -> Substring {
        let text = Substring(self)
        guard let first = text.firstIndex(where: { $0 != " " && $0 != "\t" }) else { return text[text.endIndex...] }
        let last = text.lastIndex(where: { $0 != " " && $0 != "\t" })!
        return text[first...last]
    }
}
