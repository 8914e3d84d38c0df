/// Header fields in arrival order, names as sent. The bytes of every name and value sit in
/// one buffer and fields are ranges into it: a parsed head costs one copy and no String per
/// field, and forwarding writes the same bytes back (obs-text included). Lookups are
/// case-insensitive (RFC 9110 §5.1); names the proxy uses are recognised on entry
/// (`KnownField`) and found by that tag.
public struct HTTPHeaders: Sendable {
    struct Field: Sendable {
        let name: Range<Int>
        let value: Range<Int>
        let known: KnownField?
    }

    /// A name to look up, recognised once per lookup rather than once per field compared.
    enum Key {
        case known(KnownField)
        case other(String)

        init(_ name: String) { self = KnownField(name: name.utf8).map(Key.known) ?? .other(name) }

        func matches(_ field: Field, in storage: [UInt8]) -> Bool {
            switch self {
            case .known(let known): field.known == known
            case .other(let name): field.known == nil && storage[field.name].equalsIgnoringASCIICase(name.utf8)
            }
        }
    }

    private(set) var storage: [UInt8] = []
    private(set) var fields: [Field] = []

    public init(_ pairs: [(name: String, value: String)] = []) {
        for (name, value) in pairs { add(name, value) }
    }

    /// Room for a head of `bytes` bytes, so that parsing it allocates once.
    init(reservingBytes bytes: Int) {
        storage.reserveCapacity(bytes)
        fields.reserveCapacity(16)
    }

    /// The fields as strings, for logs and tests.
    public var pairs: [(name: String, value: String)] {
        fields.map { (string($0.name), string($0.value)) }
    }

    /// Appends a field from the bytes of a parsed head (validated by the parser).
    mutating func append(name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        let known = KnownField(name: name)
        let nameStart = storage.count
        storage.append(contentsOf: name)
        let valueStart = storage.count
        storage.append(contentsOf: value)
        fields.append(Field(name: nameStart..<valueStart, value: valueStart..<storage.count, known: known))
    }

    public mutating func add(_ name: String, _ value: String) { append(name, value, known: KnownField(name: name.utf8)) }
    public mutating func add(_ field: KnownField, _ value: String) { append(field.name, value, known: field) }

    private mutating func append(_ name: String, _ value: String, known: KnownField?) {
        let nameStart = storage.count
        Self.appendBytes(of: name, to: &storage)
        let valueStart = storage.count
        Self.appendBytes(of: value, to: &storage)
        // A value a plugin or the config supplies (a user id from Nextcloud, a reply header)
        // must not end the field early: CR, LF and NUL become SP (RFC 9110 §5.5).
        for index in valueStart..<storage.count where storage[index] == 0x0D || storage[index] == 0x0A || storage[index] == 0 {
            storage[index] = 0x20
        }
        fields.append(Field(name: nameStart..<valueStart, value: valueStart..<storage.count, known: known))
    }

    /// Strings carry obs-text as Latin-1 scalars (see `string(_:)`); those go back as the
    /// single bytes they came from. A scalar above U+00FF cannot have come from the wire: it
    /// is written as UTF-8 (cutting it to one byte would turn U+010A into a line feed).
    static func appendBytes(of text: String, to out: inout [UInt8]) {
        let start = out.count
        out.append(contentsOf: text.utf8)
        if out[start...].contains(where: { $0 >= 0x80 }) {
            out.removeSubrange(start...)
            for scalar in text.unicodeScalars {
                if scalar.value <= 0xFF {
                    out.append(UInt8(scalar.value))
                } else {
                    out.append(contentsOf: String(scalar).utf8)
                }
            }
        }
    }

    /// Bytes 1:1 as scalars (Latin-1): ASCII stays ASCII, obs-text survives a round trip.
    func string(_ range: Range<Int>) -> String {
        let bytes = storage[range]
        if bytes.allSatisfy({ $0 < 0x80 }) { return String(decoding: bytes, as: UTF8.self) }
        var out = String.UnicodeScalarView()
        for byte in bytes { out.append(Unicode.Scalar(byte)) }
        return String(out)
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
        let storage = storage
        removeFields { key.matches($0, in: storage) }
    }

    /// Drops fields (their bytes stay in the buffer until the head is gone).
    mutating func removeFields(where shouldRemove: (Field) -> Bool) {
        // Most removals find nothing: don't touch (and copy) the array then.
        guard fields.contains(where: shouldRemove) else { return }
        fields.removeAll(where: shouldRemove)
    }

    /// The first value of `name`.
    public subscript(name: String) -> String? { first(Key(name)) }
    public subscript(field: KnownField) -> String? { first(.known(field)) }
    /// The bytes of the first value of `field`, without making a String.
    func firstValueBytes(_ field: KnownField) -> ArraySlice<UInt8>? {
        fields.first { $0.known == field }.map { storage[$0.value] }
    }

    private func first(_ key: Key) -> String? { fields.first { key.matches($0, in: storage) }.map { string($0.value) } }

    /// Every value of `name`, with comma-separated lists split and trimmed (RFC 9110 §5.3).
    public func values(_ name: String) -> [String] { values(Key(name)) }
    public func values(_ field: KnownField) -> [String] { values(.known(field)) }
    private func values(_ key: Key) -> [String] {
        var all: [String] = []
        forEachValue(key) { element in
            all.append(string(element.startIndex..<element.endIndex))
            return true
        }
        return all
    }

    /// True when a comma-separated header contains `token` (case-insensitive).
    public func contains(_ name: String, token: String) -> Bool { contains(Key(name), token: token) }
    public func contains(_ field: KnownField, token: String) -> Bool { contains(.known(field), token: token) }
    private func contains(_ key: Key, token: String) -> Bool {
        var found = false
        forEachValue(key) { element in
            found = element.equalsIgnoringASCIICase(token.utf8)
            return !found
        }
        return found
    }

    public func count(of name: String) -> Int { count(Key(name)) }
    public func count(of field: KnownField) -> Int { count(.known(field)) }
    private func count(_ key: Key) -> Int { fields.count { key.matches($0, in: storage) } }

    /// Calls `body` with the bytes of each list element of `field`'s values (trimmed), without
    /// collecting them, until it returns false.
    func forEachValue(_ field: KnownField, _ body: (ArraySlice<UInt8>) -> Bool) { forEachValue(.known(field), body) }
    private func forEachValue(_ key: Key, _ body: (ArraySlice<UInt8>) -> Bool) {
        for field in fields where key.matches(field, in: storage) {
            var start = field.value.lowerBound
            while let comma = storage[start..<field.value.upperBound].firstIndex(of: UInt8(ascii: ",")) {
                guard body(storage[start..<comma].trimmingOWS()) else { return }
                start = comma + 1
            }
            guard body(storage[start..<field.value.upperBound].trimmingOWS()) else { return }
        }
    }

    /// Writes `Name: value\r\n` for every field, then the empty line.
    func write(into out: inout [UInt8]) {
        for field in fields {
            out.append(contentsOf: storage[field.name])
            out.append(0x3A)
            out.append(0x20)
            out.append(contentsOf: storage[field.value])
            out.append(0x0D)
            out.append(0x0A)
        }
        out.append(0x0D)
        out.append(0x0A)
    }
}

extension Collection where Element == UInt8 {
    func equalsIgnoringASCIICase(_ other: some Collection<UInt8>) -> Bool {
        guard count == other.count else { return false }
        var j = other.startIndex
        for x in self {
            let y = other[j]
            if x != y {
                let lower = x | 0x20
                guard lower == y | 0x20, lower >= 0x61, lower <= 0x7a else { return false }
            }
            j = other.index(after: j)
        }
        return true
    }
}

extension ArraySlice<UInt8> {
    /// Without leading and trailing spaces and tabs (optional whitespace, RFC 9110 §5.6.3).
    func trimmingOWS() -> ArraySlice<UInt8> {
        guard let first = firstIndex(where: { $0 != 0x20 && $0 != 0x09 }) else { return self[endIndex...] }
        let last = lastIndex(where: { $0 != 0x20 && $0 != 0x09 })!
        return self[first...last]
    }
}

extension StringProtocol {
    func equalsIgnoringASCIICase(_ other: some StringProtocol) -> Bool { utf8.equalsIgnoringASCIICase(other.utf8) }
}
