@testable import BlockExchange
import Foundation
import HarpKernel
import HarpTestSupport
import Testing

/// FastCDC with harp's fixed profile, manifests and roots.
@Suite("content chunking")
struct ChunkingTests {
    static let reference = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("fastcdc_reference.py").path

    /// The test stream of fastcdc_reference.py: block i = SHA-256("harp-fastcdc-test" + i, 8
    /// bytes big-endian), concatenated, cut to `size` bytes.
    static func stream(_ size: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(size + 32)
        var index: UInt64 = 0
        while out.count < size {
            let digest = SHA256()
            digest.update(Array("harp-fastcdc-test".utf8) + (0..<8).reversed().map { UInt8(truncatingIfNeeded: index >> ($0 * 8)) })
            out += digest.finalize()
            index += 1
        }
        return Array(out.prefix(size))
    }

    static func file(_ bytes: [UInt8]) throws -> String {
        let path = NSTemporaryDirectory() + "harp-chunk-\(UUID().uuidString)"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test("the gear table is SHA-256 of each byte, as the protocol writes it down")
    func gearTable() throws {
        // openssl: printf '\x00' | openssl dgst -sha256 → 6e340b9cffb37a98…
        #expect(FastCDC.gear[0] == 0x6e34_0b9c_ffb3_7a98)
        let check = try shell("printf '\\xff' | openssl dgst -sha256 | awk '{ print substr($2, 1, 16) }'").output
        #expect(String(FastCDC.gear[255], radix: 16).leftPadded(16) == check)
    }

    @Test("known answers: the cut points of 16 MiB of the test stream, as an independent implementation found them")
    func knownAnswers() throws {
        let path = try Self.file(Self.stream(16 << 20))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let lengths = try FileChunker.chunk(path: path).manifest.entries.map(\.length)
        // fastcdc_reference.py 16 (Python, written from the paper and the profile alone).
        #expect(lengths == [1_605_241, 1_402_963, 1_435_319, 1_930_109, 1_188_128, 1_221_343, 696_938, 1_055_276, 1_135_043, 1_274_957,
                            1_112_089, 1_003_430, 1_085_134, 631_246])
        // And the reference run now, on another length (the last chunk is short).
        let small = try Self.file(Self.stream(5 << 20 + 12345))
        defer { try? FileManager.default.removeItem(atPath: small) }
        let python = try shell("python3 - <<'EOF'\nimport importlib.util, sys\nspec = importlib.util.spec_from_file_location('r', '\(Self.reference)')\nr = importlib.util.module_from_spec(spec); spec.loader.exec_module(r)\ndata = r.stream((5 << 20) + 12345)\ns = 0\nout = []\nwhile s < len(data):\n    n = r.cut(data, s); out.append(str(n)); s += n\nprint(' '.join(out))\nEOF").output
        #expect(try FileChunker.chunk(path: small).manifest.entries.map { String($0.length) }.joined(separator: " ") == python)
    }

    @Test("chunks respect the profile: at least 256 KiB (but the last), at most 4 MiB, on any data")
    func profileBounds() throws {
        for bytes in [Self.stream(20 << 20), [UInt8](repeating: 0, count: 9 << 20), [UInt8](repeating: 7, count: 100)] {
            let path = try Self.file(bytes)
            defer { try? FileManager.default.removeItem(atPath: path) }
            let entries = try FileChunker.chunk(path: path).manifest.entries
            #expect(entries.reduce(0) { $0 + $1.length } == bytes.count)
            #expect(entries.dropLast().allSatisfy { $0.length >= FastCDC.minimumSize && $0.length <= FastCDC.maximumSize })
            #expect(entries.last!.length <= FastCDC.maximumSize)
        }
    }

    @Test("one byte inserted at the start of 64 MiB changes at most two chunks")
    func insertOneByte() throws {
        let original = Self.stream(64 << 20)
        let first = try Self.file(original)
        let second = try Self.file([0x42] + original)
        defer { try? FileManager.default.removeItem(atPath: first); try? FileManager.default.removeItem(atPath: second) }
        let before = Set(try FileChunker.chunk(path: first).manifest.entries.map(\.id))
        let after = try FileChunker.chunk(path: second).manifest.entries
        let new = after.filter { !before.contains($0.id) }
        #expect(new.count <= 2, "\(new.count) new chunks of \(after.count)")
        #expect(after.count > 40)
    }

    @Test("a manifest's root is SHA-256 of its canonical encoding; order and lengths matter")
    func manifestRoot() {
        let a = ChunkID(bytes: [UInt8](repeating: 1, count: 32)), b = ChunkID(bytes: [UInt8](repeating: 2, count: 32))
        let manifest = Manifest(entries: [.init(id: a, length: 5), .init(id: b, length: 1 << 20)])
        #expect(manifest.encoded.count == 16 + 2 * 40)
        #expect(Array(manifest.encoded.prefix(16)) == Array("harp-manifest-1\n".utf8))
        #expect(Array(manifest.encoded[48..<56]) == [0, 0, 0, 0, 0, 0, 0, 5])
        let digest = SHA256()
        digest.update(manifest.encoded)
        #expect(manifest.root.bytes == digest.finalize())
        #expect(manifest.root != Manifest(entries: [.init(id: b, length: 1 << 20), .init(id: a, length: 5)]).root)
        #expect(manifest.root != Manifest(entries: [.init(id: a, length: 6), .init(id: b, length: 1 << 20)]).root)
        #expect(manifest.size == 5 + (1 << 20))
        #expect(a.description == String(repeating: "01", count: 32), "an ID prints as its own bytes in hex")
    }
}

extension String {
    func leftPadded(_ width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
