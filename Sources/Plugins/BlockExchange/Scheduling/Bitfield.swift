/// One bit per manifest entry: which chunks a peer holds. On the wire: bit i is bit
/// (7 - i % 8) of byte i / 8, as BitTorrent's bitfield.
struct Bitfield: Sendable, Equatable {
    private(set) var bytes: [UInt8]
    let count: Int

    init(count: Int, set: Bool = false) {
        self.count = count
        bytes = [UInt8](repeating: set ? 0xFF : 0, count: (count + 7) / 8)
        if set, count % 8 != 0 { bytes[bytes.count - 1] = UInt8(0xFF << (8 - count % 8) & 0xFF) }
    }

    /// nil when `bytes` is not the right length for `count` entries or sets bits past the end.
    init?(bytes: [UInt8], count: Int) {
        guard bytes.count == (count + 7) / 8 else { return nil }
        if count % 8 != 0, let last = bytes.last, last & UInt8(0xFF >> (count % 8)) != 0 { return nil }
        self.bytes = bytes
        self.count = count
    }

    subscript(index: Int) -> Bool {
        get { bytes[index >> 3] & (0x80 >> UInt8(index & 7)) != 0 }
        set {
            if newValue { bytes[index >> 3] |= 0x80 >> UInt8(index & 7) } else { bytes[index >> 3] &= ~(0x80 >> UInt8(index & 7)) }
        }
    }
}
