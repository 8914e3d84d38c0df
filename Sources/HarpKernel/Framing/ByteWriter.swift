/// Builds a binary message: big-endian integers, raw bytes and length-prefixed fields — the
/// one encoder behind harp's own wire and disk formats (P2P frames, manifests, operations,
/// reports), so every format spells an integer the same way.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 0) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public var count: Int { bytes.count }

    public mutating func u8(_ value: UInt8) { bytes.append(value) }
    public mutating func u16(_ value: UInt16) { integer(UInt64(value), width: 2) }
    public mutating func u32(_ value: UInt32) { integer(UInt64(value), width: 4) }
    public mutating func u64(_ value: UInt64) { integer(value, width: 8) }
    public mutating func i64(_ value: Int64) { integer(UInt64(bitPattern: value), width: 8) }
    public mutating func bool(_ value: Bool) { bytes.append(value ? 1 : 0) }

    public mutating func raw(_ data: some Sequence<UInt8>) { bytes.append(contentsOf: data) }

    /// A u16 length, then `data` (at most 65,535 bytes: the caller bounds it).
    public mutating func prefixed16(_ data: [UInt8]) {
        precondition(data.count <= Int(UInt16.max), "a u16-prefixed field of \(data.count) bytes")
        u16(UInt16(data.count))
        raw(data)
    }

    /// A u32 length, then `data`.
    public mutating func prefixed32(_ data: [UInt8]) {
        precondition(data.count <= Int(UInt32.max), "a u32-prefixed field of \(data.count) bytes")
        u32(UInt32(data.count))
        raw(data)
    }

    @inline(__always)
    private mutating func integer(_ value: UInt64, width: Int) {
        for shift in stride(from: (width - 1) * 8, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }
}
