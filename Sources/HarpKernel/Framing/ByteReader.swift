/// Reads a binary message that `ByteWriter` made: each read takes the next field or throws
/// `ByteReader.Underrun` when the bytes run out, so a truncated or corrupt body is refused,
/// never half read, and no count a peer sends can make a read go past the end.
public struct ByteReader: Sendable {
    /// Thrown when a field needs more bytes than are left.
    public struct Underrun: Error, Equatable, CustomStringConvertible {
        public let needed: Int
        public let left: Int
        public var description: String { "the message ends early (\(needed) bytes needed, \(left) left)" }
    }

    public let bytes: [UInt8]
    public private(set) var offset = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var atEnd: Bool { offset >= bytes.count }
    public var remaining: Int { bytes.count - offset }

    public mutating func u8() throws(Underrun) -> UInt8 {
        try need(1)
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func u16() throws(Underrun) -> UInt16 { UInt16(try integer(2)) }
    public mutating func u32() throws(Underrun) -> UInt32 { UInt32(try integer(4)) }
    public mutating func u64() throws(Underrun) -> UInt64 { try integer(8) }
    public mutating func i64() throws(Underrun) -> Int64 { Int64(bitPattern: try integer(8)) }

    /// The next `count` bytes.
    public mutating func take(_ count: Int) throws(Underrun) -> [UInt8] {
        try need(count)
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    /// A u16 length, then that many bytes.
    public mutating func prefixed16() throws(Underrun) -> [UInt8] { try take(Int(try u16())) }

    /// A u32 length, then that many bytes.
    public mutating func prefixed32() throws(Underrun) -> [UInt8] { try take(Int(try u32())) }

    /// Everything not read yet.
    public mutating func rest() -> [UInt8] {
        defer { offset = bytes.count }
        return Array(bytes[offset...])
    }

    @inline(__always)
    private mutating func integer(_ width: Int) throws(Underrun) -> UInt64 {
        try need(width)
        defer { offset += width }
        var value: UInt64 = 0
        for index in offset..<offset + width { value = value << 8 | UInt64(bytes[index]) }
        return value
    }

    @inline(__always)
    private func need(_ count: Int) throws(Underrun) {
        guard count >= 0, count <= bytes.count - offset else { throw Underrun(needed: count, left: bytes.count - offset) }
    }
}
