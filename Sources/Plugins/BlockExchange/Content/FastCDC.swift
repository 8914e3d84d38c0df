import CShims

/// Content-defined chunking with FastCDC (Xia et al., 2016/2020): a gear rolling hash, cut-point
/// skipping below the minimum, and normalized chunking (a stricter mask before the average
/// size, a looser one after), so that the same bytes make the same chunks on every node and
/// inserting a byte moves only the chunk around it.
///
/// The profile is part of the protocol (docs/protocols/p2p.md): changing any constant here
/// changes every chunk ID, so it never changes within a protocol version.
public enum FastCDC {
    public static let minimumSize = 256 << 10
    public static let averageSize = 1 << 20
    public static let maximumSize = 4 << 20

    /// Before the average size a cut needs the top 22 bits of the hash zero (2 bits harder
    /// than 1 MiB's 20), after it the top 18 (2 bits easier): normalization level 2. The top
    /// bits of a gear hash depend on the last 64 bytes; the low bits only on the last few.
    static let strictMask: UInt64 = ~0 << 42
    static let looseMask: UInt64 = ~0 << 46

    /// gear[b] = the first 8 bytes, big-endian, of SHA-256 of the single byte b.
    public static let gear: [UInt64] = (0...255).map { (byte: Int) -> UInt64 in
        var input = UInt8(byte)
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        EVP_Digest(&input, 1, &digest, &length, EVP_sha256(), nil)
        return digest.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// The length of the chunk that starts at the beginning of `data`, which holds the rest
    /// of the file or at least `maximumSize` bytes of it.
    public static func cut(_ data: UnsafeRawBufferPointer) -> Int {
        let count = data.count
        if count <= minimumSize { return count }
        let end = min(count, maximumSize)
        let normal = min(end, averageSize)
        let bytes = data.bindMemory(to: UInt8.self)
        return gear.withUnsafeBufferPointer { table -> Int in
            var hash: UInt64 = 0
            var index = minimumSize
            while index < normal {
                hash = (hash &<< 1) &+ table[Int(bytes[index])]
                if hash & strictMask == 0 { return index + 1 }
                index += 1
            }
            while index < end {
                hash = (hash &<< 1) &+ table[Int(bytes[index])]
                if hash & looseMask == 0 { return index + 1 }
                index += 1
            }
            return end
        }
    }
}
