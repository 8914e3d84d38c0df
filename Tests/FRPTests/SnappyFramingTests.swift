import Foundation
@testable import FRP
import HarpKernel
import HarpTestSupport
import Testing

/// frp's `use_compression` layer: snappy framing and its checksum against known answers.
@Suite("snappy framing")
struct SnappyFramingTests {
    @Test("CRC-32C known answers; the masked checksum frpc wrote for its chunk")
    func checksums() {
        #expect(Array("123456789".utf8).withUnsafeBytes { CRC32C.checksum($0) } == 0xE306_9283)
        #expect([UInt8]().withUnsafeBytes { CRC32C.checksum($0) } == 0)
        // From frpc 0.65 (use_compression): `01 190000 38d70282 "ECHO:hello-from-user\n"`.
        #expect(Array("ECHO:hello-from-user\n".utf8).withUnsafeBytes { CRC32C.masked($0) } == 0x8202_D738)
        // Slicing-by-8 agrees with the byte-at-a-time loop at every length and offset.
        var generator = SeededGenerator(seed: 0x5EED_C0DE)
        let bytes = (0..<1000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        for length in [1, 7, 8, 9, 63, 64, 65, 999] {
            let fast = bytes.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[1..<1 + length])) }
            var slow: UInt32 = 0xFFFF_FFFF
            for byte in bytes[1..<1 + length] {
                slow ^= UInt32(byte)
                for _ in 0..<8 { slow = slow & 1 != 0 ? (slow >> 1) ^ 0x82F6_3B78 : slow >> 1 }
            }
            #expect(fast == ~slow, "length \(length), seed 0x5EEDC0DE")
        }
    }

    @Test("frpc's framed stream decodes; harp's frames round-trip (compressed and not); corruption is refused")
    func framing() async throws {
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        let fromFrpc: [UInt8] = SnappyStream.identifier + [0x01, 0x19, 0x00, 0x00, 0x38, 0xD7, 0x02, 0x82] + Array("ECHO:hello-from-user\n".utf8)
        let compressible = [UInt8](repeating: 0x61, count: 200_000) + Array("end".utf8)
        let outcome = await loop.spawn { () -> [String] in
            var results: [String] = []
            func readAll(_ stream: SnappyStream) async -> (bytes: [UInt8], result: Int) {
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 70_000, alignment: 1)
                defer { buffer.deallocate() }
                var out: [UInt8] = []
                while true {
                    let n = await stream.read(into: buffer, timeout: .seconds(5))
                    if n <= 0 { return (out, n) }
                    out += buffer[0..<n]
                }
            }
            // frpc's bytes, fed raw.
            let (a, b) = socketPair()
            let raw = SocketStream(loop: loop, fd: a)
            _ = await raw.write(fromFrpc, timeout: .seconds(5))
            await raw.finishWriting()
            let decoded = await readAll(SnappyStream(SocketStream(loop: loop, fd: b)))
            results.append(String(decoding: decoded.bytes, as: UTF8.self))
            // harp to harp, 200 KiB of 'a': compressed chunks, fewer bytes on the wire.
            let (c, d) = socketPair()
            let writer = SnappyStream(SocketStream(loop: loop, fd: c))
            let wire = SocketStream(loop: loop, fd: d)
            _ = await writer.write(compressible, timeout: .seconds(5))
            await writer.finishWriting()
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 300_000, alignment: 1)
            defer { buffer.deallocate() }
            var onWire: [UInt8] = []
            while true {
                let n = await wire.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<300_000]), timeout: .seconds(5))
                if n <= 0 { break }
                onWire += buffer[0..<n]
            }
            results.append(onWire.count < 20_000 ? "compressed" : "not compressed: \(onWire.count)")
            let (e, f) = socketPair()
            let replay = SocketStream(loop: loop, fd: e)
            _ = await replay.write(onWire, timeout: .seconds(5))
            await replay.finishWriting()
            let back = await readAll(SnappyStream(SocketStream(loop: loop, fd: f)))
            results.append(back.bytes == compressible ? "round trip" : "differs")
            // One flipped data byte: the checksum refuses the chunk.
            var corrupt = fromFrpc
            corrupt[corrupt.count - 2] ^= 0x20
            let (g, h) = socketPair()
            let bad = SocketStream(loop: loop, fd: g)
            _ = await bad.write(corrupt, timeout: .seconds(5))
            await bad.finishWriting()
            let refused = await readAll(SnappyStream(SocketStream(loop: loop, fd: h)))
            results.append(refused.result == -Int(EPROTO) ? "refused" : "accepted \(refused.result)")
            return results
        }.value
        #expect(outcome == ["ECHO:hello-from-user\n", "compressed", "round trip", "refused"])
    }
}
