import BlockExchange

/// Reads the metadata sync's binary forms (operations, reports, settled state): big-endian
/// integers, IDs and placements, each nil when the bytes run out — so a truncated or corrupt
/// body is refused, never half read.
struct ByteReader {
    let bytes: [UInt8]
    var offset = 0
    var atEnd: Bool { offset >= bytes.count }

    mutating func take(_ count: Int) -> [UInt8]? {
        guard count >= 0, offset + count <= bytes.count else { return nil }
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    mutating func byte() -> UInt8? { take(1)?.first }

    mutating func integer(_ count: Int) -> UInt64? {
        guard count >= 0, offset + count <= bytes.count else { return nil }
        defer { offset += count }
        return bytes[offset..<offset + count].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }

    mutating func item() -> ItemID? {
        take(16).flatMap { ItemID(bytes: $0) }
    }

    mutating func node() -> NodeID? {
        take(32).map { NodeID(bytes: $0) }
    }

    mutating func placement() -> ReplicatedTree.Placement? {
        guard let parent = item(), let directory = byte(), let length = integer(2), let name = take(Int(length)),
              let text = String(validating: name, as: UTF8.self), !text.isEmpty else { return nil }
        return ReplicatedTree.Placement(parent: parent, name: text, isDirectory: directory == 1)
    }
}
