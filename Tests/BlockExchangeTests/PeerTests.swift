@testable import BlockExchange
import Foundation
import HarpKernel
import HarpTestSupport
import Testing

/// Peer connections between real harp nodes, and the wire decoder under random input.
@Suite("p2p peers")
struct PeerTests {
    /// A node's state directory with an identity, its folder, and its port.
    struct Node {
        let dir: String
        let id: String
        let port: UInt16

        init(dir: String, id: String, port: UInt16) {
            self.dir = dir
            self.id = id
            self.port = port
        }

        init() throws {
            dir = NodeTests.temporaryDirectory()
            try FileManager.default.createDirectory(atPath: dir + "/folder", withIntermediateDirectories: true)
            id = try HarpProcess.run(["storage", "init", "--dir", dir]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            port = freePort()
        }

        func config(peers: [Node]) -> String {
            """
            [harp]
            plugins = ["p2p"]
            log_level = "info"
            [storage]
            dir = "\(dir)"
            folder = "\(dir)/folder"
            listen = "127.0.0.1:\(port)"
            peers = [\(peers.map { "\"\($0.id)@127.0.0.1:\($0.port)\"" }.joined(separator: ", "))]
            """
        }
    }

    @Test("two configured nodes connect (TLS 1.3, node IDs, Hello); a node not in the list is refused with its ID logged")
    func admission() throws {
        let a = try Node(), b = try Node(), stranger = try Node()
        defer { for node in [a, b, stranger] { try? FileManager.default.removeItem(atPath: node.dir) } }
        let harpA = try HarpProcess.serve(a.config(peers: [b]))
        let harpB = try HarpProcess.serve(b.config(peers: [a]))
        try harpA.waitForOutput("peer connected \(b.id)")
        try harpB.waitForOutput("peer connected \(a.id)")
        // The stranger holds a valid identity but is not in A's list.
        let attempt = try shell("""
            echo | timeout 5 openssl s_client -connect 127.0.0.1:\(a.port) -tls1_3 -alpn harp-p2p/1 \
              -cert \(stranger.dir)/node.crt -key \(stranger.dir)/node.key 2>&1 | grep -c 'BEGIN CERTIFICATE' || true
            """).output
        #expect(attempt == "1", "the TLS handshake itself completes; admission comes after it")
        try harpA.waitForOutput("refused peer \(stranger.id): not in [storage] peers")
        // B goes away: A notices; B comes back: they connect again.
        #expect(try harpB.stop() == 0)
        try harpA.waitForOutput("peer disconnected \(b.id)")
        let harpB2 = try HarpProcess.serve(b.config(peers: [a]))
        try harpB2.waitForOutput("peer connected \(a.id)")
        #expect(try harpB2.stop() == 0)
        #expect(try harpA.stop() == 0)
        // Peer connections and dial back-offs end at shutdown: no waiting out the grace period.
        for harp in [harpA, harpB, harpB2] { #expect(!harp.stderr.contains("grace period over"), "\(harp.stderr.suffix(800))") }
    }

    @Test("a peer presenting another identity than the configured one is not connected to")
    func impostor() throws {
        // A must be the dialer (the smaller ID dials), or nobody would knock on either door.
        let pair = [try Node(), try Node()].sorted {
            NodeID(parsing: $0.id)!.bytes.lexicographicallyPrecedes(NodeID(parsing: $1.id)!.bytes)
        }
        let a = pair[0], b = pair[1], impostor = try Node()
        defer { for node in [a, b, impostor] { try? FileManager.default.removeItem(atPath: node.dir) } }
        // A and B list each other, but B's address is served by the impostor (who lists A).
        let wrongB = Node(dir: impostor.dir, id: impostor.id, port: b.port)
        let harpA = try HarpProcess.serve(a.config(peers: [b]))
        let harpImpostor = try HarpProcess.serve(wrongB.config(peers: [a]))
        // A dials B's address, finds the impostor's ID there, and does not connect.
        let refused = ["is \(impostor.id), not the configured \(b.id)"]
        #expect(waitUntil(timeout: 30) { refused.contains { harpA.stderr.contains($0) } }, "\(harpA.stderr)")
        #expect(!harpA.stderr.contains("peer connected"))
        #expect(try harpImpostor.stop() == 0)
        #expect(try harpA.stop() == 0)
    }

    @Test("the frame decoder on 20,000 random inputs: no crash, frames within their limits, garbage refused")
    func decoderFuzz() {
        var generator = SeededGenerator(seed: 1_234_567)
        var frames = 0, invalid = 0, chunks = 0
        for _ in 0..<20_000 {
            let count = Int.random(in: 0...48, using: &generator)
            var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
            // Often a known type with a plausible length, so that every outcome is exercised.
            if Bool.random(using: &generator), bytes.count >= 5 {
                bytes[0] = UInt8.random(in: 1...14, using: &generator)
                bytes[1] = 0
                bytes[2] = Bool.random(using: &generator) ? 0 : bytes[2] & 0x7F
            }
            bytes.withUnsafeBytes { raw -> Void in
                switch PeerFrameDecoder().decode(raw) {
                case .needMore:
                    #expect(raw.count < PeerFrameHeader.size || (raw[0] == PeerFrameType.chunk.rawValue && raw.count < PeerFrameHeader.size + 32))
                case .frame(let header, let headerLength, let payloadLength):
                    frames += 1
                    #expect(header.length <= header.type.maximumBody)
                    if header.type == .chunk {
                        chunks += 1
                        #expect(headerLength == 37 && payloadLength == header.length - 32 && payloadLength > 0)
                    } else {
                        #expect(headerLength == 5 && payloadLength == header.length)
                    }
                case .invalid: invalid += 1
                }
            }
        }
        #expect(frames > 0 && invalid > 0 && chunks > 0, "\(frames) frames, \(invalid) invalid, \(chunks) chunks")
        let hello = PeerMessage.hello(PeerHello(capabilities: 5)).frame
        hello.withUnsafeBytes { raw -> Void in
            guard case .frame(let header, 5, let length) = PeerFrameDecoder().decode(raw) else {
                Issue.record("not a frame")
                return
            }
            #expect(header.type == .hello && length == 14)
        }
    }

    @Test("every message encodes and decodes back; a body cut short or lengthened is the peer's violation, named")
    func messages() throws {
        var generator = SeededGenerator(seed: 7)
        func id() -> ChunkID { ChunkID(bytes: (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }) }
        let manifest = Manifest(entries: (0..<300).map { _ in Manifest.Entry(id: id(), length: FastCDC.minimumSize) })
        var half = Bitfield(count: 4_000)
        for index in 0..<2_000 { half[index] = true }
        let messages: [PeerMessage] = [
            .hello(PeerHello(capabilities: 5)), .getManifest(id()), .getWhole(id()), .manifest(manifest.root, manifest), .noManifest(id()), .haveQuery(id()),
            .have(id(), .all), .have(id(), .entries(half.bytes)), .have(id(), .entries([0x5A, 0xC3])),
            .haveUpdate(id(), entries: [0, 7, 1_000_000]), .fetching(id(), entries: []), .request(id()), .dontHave(id()),
            .cancel(id()), .ping(0x0102_0304_0506_0708), .pong(42),
        ]
        for message in messages {
            let frame = message.frame
            let body = Array(frame[PeerFrameHeader.size...])
            #expect(frame[0] == message.type.rawValue && body.count <= message.type.maximumBody)
            #expect(try PeerMessage(type: message.type, body: body) == message, "\(message.type)")
            // Cut short by one byte, or one byte more: refused. (A Hello may be longer; a
            // bitfield takes any length — the download checks it against the manifest.)
            guard message.type != .hello else { continue }
            if case .have(_, .entries) = message { continue }
            #expect(throws: PeerViolation.self, "\(message.type) cut short") { try PeerMessage(type: message.type, body: Array(body.dropLast())) }
            #expect(throws: PeerViolation.self, "\(message.type) lengthened") { try PeerMessage(type: message.type, body: body + [0]) }
        }
        #expect(throws: PeerViolation.malformed(.request, bytes: 5)) { try PeerMessage(type: .request, body: [1, 2, 3, 4, 5]) }
        #expect(throws: PeerViolation.notHello) { try PeerMessage(type: .hello, body: Array("http-p2p".utf8) + [0, 1, 0, 0, 0, 0]) }
        #expect(throws: PeerViolation.malformed(.hello, bytes: 0)) { try PeerMessage(type: .hello, body: []) }
        // A later version's longer Hello is read as far as ours goes.
        #expect(try PeerMessage(type: .hello, body: Array(PeerMessage.hello(PeerHello(version: 2)).frame[5...]) + [9, 9]) == .hello(PeerHello(version: 2)))
        let other = id()
        let lying = Array(PeerMessage.manifest(manifest.root, manifest).frame[5...])
        #expect(throws: PeerViolation.manifestNotOfRoot(other)) { try PeerMessage(type: .manifest, body: other.bytes + lying[32...]) }
        #expect(throws: PeerViolation.doesNotInflate(.manifest)) { try PeerMessage(type: .manifest, body: other.bytes + [PeerFrameFlags.deflated, 1, 2, 3]) }
    }

    @Test("20,000 random bodies of every message type: refused with a named violation or decoded to a value that encodes back to itself")
    func messageFuzz() throws {
        var generator = SeededGenerator(seed: SeededGenerator.seed(for: "peer message fuzz"))
        let types = PeerFrameType.allCases.filter { $0 != .chunk && $0 != .channel }
        var decoded = 0, refused = 0
        for _ in 0..<20_000 {
            let type = types[Int.random(in: 0..<types.count, using: &generator)]
            // Mostly the shapes a type expects (a root, flags, whole u32s), so that decoding goes deep.
            var body = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
            body += (0..<Int.random(in: 0...12, using: &generator)).map { _ in UInt8.random(in: 0...3, using: &generator) }
            if Bool.random(using: &generator) { body = Array(body.prefix(Int.random(in: 0...body.count, using: &generator))) }
            do {
                let message = try PeerMessage(type: type, body: body)
                decoded += 1
                #expect(try PeerMessage(type: type, body: Array(message.frame[PeerFrameHeader.size...])) == message, "\(type) \(body)")
            } catch {
                refused += 1
                #expect(!error.description.isEmpty)
            }
        }
        #expect(decoded > 1_000 && refused > 1_000, "\(decoded) decoded, \(refused) refused")
    }

    @Test("manifests and have-lists round-trip; deflate only when smaller, refused past its limit")
    func metadataEncoding() throws {
        var generator = SeededGenerator(seed: 99)
        let manifest = Manifest(entries: (0..<500).map { _ in
            Manifest.Entry(id: ChunkID(bytes: (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }),
                           length: Int.random(in: FastCDC.minimumSize...FastCDC.maximumSize, using: &generator))
        })
        #expect(Manifest(encoded: manifest.encoded) == manifest)
        #expect(Manifest(encoded: Array(manifest.encoded.dropLast())) == nil)
        var zeroLength = manifest.encoded
        for index in 48..<56 { zeroLength[index] = 0 }
        #expect(Manifest(encoded: zeroLength) == nil, "a chunk of length 0 is not in the profile")
        // IDs do not compress, the lengths' high zero bytes do: a little smaller, and back.
        let encoded = manifest.encoded
        let packed = try #require(Deflate.compressIfSmaller(encoded))
        #expect(packed.count < encoded.count)
        #expect(packed.withUnsafeBytes { Deflate.decompress($0, limit: encoded.count) } == encoded)
        let noise = (0..<4096).map { _ in UInt8.random(in: 0...255, using: &generator) }
        #expect(Deflate.compressIfSmaller(noise) == nil, "random bytes are sent as they are")
        // A half-done have-list does.
        var have = Bitfield(count: 10_000)
        for index in 0..<5_000 { have[index] = true }
        let deflated = try #require(Deflate.compressIfSmaller(have.bytes))
        #expect(deflated.count < 100)
        #expect(deflated.withUnsafeBytes { Deflate.decompress($0, limit: 2_000) } == have.bytes)
        #expect(deflated.withUnsafeBytes { Deflate.decompress($0, limit: 1_000) } == nil, "inflating past the limit is refused")
        #expect([UInt8](repeating: 7, count: 20).withUnsafeBytes { Deflate.decompress($0, limit: 1_000) } == nil)
        #expect(Bitfield(bytes: [0xFF, 0xFF], count: 12) == nil, "bits past the end")
        #expect(Bitfield(bytes: [0xFF, 0xF0], count: 12) == Bitfield(count: 12, set: true))
    }
}
