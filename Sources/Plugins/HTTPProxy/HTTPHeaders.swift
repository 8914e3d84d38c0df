/// Header fields in arrival order, names as sent. Lookups are case-insensitive (RFC 9110 §5.1).
public struct HTTPHeaders: Sendable, Sequence {
    public private(set) var fields: [(name: String, value: String)] = []

    public init(_ fields: [(name: String, value: String)] = []) {
        self.fields = fields
    }

    public func makeIterator() -> IndexingIterator<[(name: String, value: String)]> { fields.makeIterator() }

    public mutating func add(_ name: String, _ value: String) {
        fields.append((name, value))
    }

    /// Replaces every field named `name` with one field.
    public mutating func set(_ name: String, _ value: String) {
        remove(name)
        fields.append((name, value))
    }

    public mutating func remove(_ name: String) {
        fields.removeAll { $0.name.equalsIgnoringASCIICase(name) }
    }

    public mutating func removeAll(where shouldRemove: (String) -> Bool) {
        fields.removeAll { shouldRemove($0.name) }
    }

    /// The first value of `name`.
    public subscript(name: String) -> String? {
        fields.first { $0.name.equalsIgnoringASCIICase(name) }?.value
    }

    /// Every value of `name`, with comma-separated lists split and trimmed (RFC 9110 §5.3).
    public func values(_ name: String) -> [Substring] {
        fields.filter { $0.name.equalsIgnoringASCIICase(name) }.flatMap { field in
            field.value.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingOWS() }
        }
    }

    /// True when a comma-separated header contains `token` (case-insensitive).
    public func contains(_ name: String, token: String) -> Bool {
        values(name).contains { $0.equalsIgnoringASCIICase(token) }
    }

    public func count(of name: String) -> Int {
        fields.count { $0.name.equalsIgnoringASCIICase(name) }
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
