import Glibc
import HarpKernel

/// A file's or directory's stable 128-bit identity: made once, at creation, on the node that
/// creates it (random: two nodes never pick the same one), and kept across every rename and
/// move. Two IDs are reserved: the root of the folder and the trash a delete moves things to.
public struct ItemID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let high: UInt64
    public let low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    public static let root = ItemID(high: 0, low: 0)
    public static let trash = ItemID(high: 0, low: 1)

    /// A new random ID (never one of the reserved ones).
    public static func random<G: RandomNumberGenerator>(using generator: inout G) -> ItemID {
        while true {
            let id = ItemID(high: generator.next(), low: generator.next())
            if id.high != 0 { return id }
        }
    }

    /// The 16 bytes of the wire and the log: high then low, big-endian.
    public var bytes: [UInt8] {
        var writer = ByteWriter(capacity: 16)
        writer.u64(high)
        writer.u64(low)
        return writer.bytes
    }

    /// From 16 bytes as `bytes` writes them; nil for another length.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 16 else { return nil }
        let value = Array(bytes)
        high = value[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
        low = value[8..<16].reduce(0) { $0 << 8 | UInt64($1) }
    }

    public static func < (a: ItemID, b: ItemID) -> Bool { (a.high, a.low) < (b.high, b.low) }

    public var description: String {
        switch self {
        case .root: "root"
        case .trash: "trash"
        default: String(high, radix: 16) + "-" + String(low, radix: 16)
        }
    }
}
