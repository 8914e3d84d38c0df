import Glibc
import HarpKernel

/// A chunk's identity: SHA-256 of its bytes.
public struct ChunkID: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]
    public init(bytes: [UInt8]) {
        precondition(bytes.count == 32, "a chunk ID is 32 bytes")
        self.bytes = bytes
    }
    public var description: String { SHA256.hexString(bytes) }
}

extension ChunkID {
    /// From 64 hex digits (as printed); nil otherwise.
    public init?(hex text: String) {
        let digits = Array(text.utf8)
        guard digits.count == 64 else { return nil }
        var bytes: [UInt8] = []
        for index in stride(from: 0, to: 64, by: 2) {
            guard let high = Self.nibble(digits[index]), let low = Self.nibble(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
        }
        self.init(bytes: bytes)
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// A file version's content: its chunks in order, and the root that names it.
///
/// Canonical encoding (the root is SHA-256 of it): the 16 bytes `harp-manifest-1\n`, then per
/// chunk its 32-byte ID and its length as 8 bytes big-endian. The version tag keeps a future
/// profile or layout from ever producing a root that collides with this one's.
public struct Manifest: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public let id: ChunkID
        public let length: Int
    }

    public let entries: [Entry]
    public var size: Int { entries.reduce(0) { $0 + $1.length } }

    static let tag = Array("harp-manifest-1\n".utf8)

    public var encoded: [UInt8] {
        var out = ByteWriter(capacity: Self.tag.count + entries.count * 40)
        out.raw(Self.tag)
        for entry in entries {
            out.raw(entry.id.bytes)
            out.u64(UInt64(entry.length))
        }
        return out.bytes
    }

    public init(entries: [Entry]) {
        self.entries = entries
    }

    /// Decodes a canonical encoding; nil when it is not one (wrong tag, a partial entry, a
    /// chunk length outside the profile).
    public init?(encoded bytes: [UInt8]) {
        guard bytes.count >= Self.tag.count, (bytes.count - Self.tag.count) % 40 == 0 else { return nil }
        var reader = ByteReader(bytes)
        var entries: [Entry] = []
        entries.reserveCapacity((bytes.count - Self.tag.count) / 40)
        do {
            guard try reader.take(Self.tag.count) == Self.tag else { return nil }
            while !reader.atEnd {
                let id = ChunkID(bytes: try reader.take(32))
                let length = try reader.u64()
                guard length > 0, length <= UInt64(FastCDC.maximumSize) else { return nil }
                entries.append(Entry(id: id, length: Int(length)))
            }
        } catch {
            return nil  // unreachable: the length was checked to hold whole entries
        }
        self.entries = entries
    }

    /// The content root: SHA-256 of the canonical encoding.
    public var root: ChunkID {
        let digest = SHA256()
        digest.update(encoded)
        return ChunkID(bytes: digest.finalize())
    }
}

/// Cuts a file into FastCDC chunks and hashes each: the manifest and where each chunk starts.
public enum FileChunker {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Reads `path` once, in windows of two maximum chunks (8 MiB), cutting and hashing as it
    /// goes; memory stays at one window whatever the file's size.
    public static func chunk(path: String) throws(Failure) -> (manifest: Manifest, offsets: [Int]) {
        var entries: [Manifest.Entry] = []
        var offsets: [Int] = []
        try walk(path: path) { chunk, offset in
            let digest = SHA256()
            digest.update(chunk)
            entries.append(Manifest.Entry(id: ChunkID(bytes: digest.finalize()), length: chunk.count))
            offsets.append(offset)
        }
        return (Manifest(entries: entries), offsets)
    }

    /// Only the cut points: how many chunks and bytes (the chunker's speed without hashing).
    public static func cutPoints(path: String) throws(Failure) -> (chunks: Int, size: Int) {
        var chunks = 0, size = 0
        try walk(path: path) { chunk, _ in
            chunks += 1
            size += chunk.count
        }
        return (chunks, size)
    }

    /// Calls `body` with each chunk's bytes (valid during the call) and file offset, in order.
    static func walk(path: String, _ body: (UnsafeRawBufferPointer, Int) -> Void) throws(Failure) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(description: "cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let window = UnsafeMutableRawBufferPointer.allocate(byteCount: 2 * FastCDC.maximumSize, alignment: 64)
        defer { window.deallocate() }
        var filled = 0, start = 0, fileOffset = 0, atEnd = false
        while true {
            // Keep at least one maximum chunk ahead of `start`, unless the file ends first.
            if !atEnd && filled - start < FastCDC.maximumSize {
                if start > 0 {
                    (window.baseAddress! + 0).copyMemory(from: window.baseAddress! + start, byteCount: filled - start)
                    filled -= start
                    start = 0
                }
                while filled < window.count {
                    let count = read(fd, window.baseAddress! + filled, window.count - filled)
                    if count < 0 {
                        if errno == EINTR { continue }
                        throw Failure(description: "cannot read \(path): \(String(cString: strerror(errno)))")
                    }
                    if count == 0 {
                        atEnd = true
                        break
                    }
                    filled += count
                }
            }
            if start == filled { break }
            let rest = UnsafeRawBufferPointer(rebasing: window[start..<filled])
            let length = FastCDC.cut(rest)
            body(UnsafeRawBufferPointer(rebasing: rest[0..<length]), fileOffset)
            fileOffset += length
            start += length
        }
    }
}
