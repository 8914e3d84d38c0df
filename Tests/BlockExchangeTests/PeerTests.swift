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
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline, !refused.contains(where: { harpA.stderr.contains($0) }) { usleep(100_000) }
        #expect(refused.contains(where: { harpA.stderr.contains($0) }), "\(harpA.stderr)")
        #expect(!harpA.stderr.contains("peer connected"))
        #expect(try harpImpostor.stop() == 0)
        #expect(try harpA.stop() == 0)
    }

    @Test("the frame decoder on 20,000 random inputs: no crash, frames within their limits, garbage refused")
    func decoderFuzz() {
        var generator = SeededGenerator(seed: 1_234_567)
        var frames = 0, invalid = 0
        for _ in 0..<20_000 {
            let count = Int.random(in: 0...24, using: &generator)
            var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
            // Often a known type with a small length, so that every outcome is exercised.
            if Bool.random(using: &generator), bytes.count >= 5 { bytes[0] = 1; bytes[1] = 0; bytes[2] = 0; bytes[3] = 0 }
            bytes.withUnsafeBytes { raw -> Void in
                switch PeerFrameDecoder().decode(raw) {
                case .needMore: #expect(raw.count < PeerFrameHeader.size)
                case .frame(let header, let headerLength, let payloadLength):
                    frames += 1
                    #expect(headerLength == 5 && payloadLength == header.length && header.length <= header.type.maximumBody)
                case .invalid: invalid += 1
                }
            }
        }
        #expect(frames > 0 && invalid > 0)
        let hello = PeerFrameHeader.encode(.hello, body: PeerHello(capabilities: 5).body)
        hello.withUnsafeBytes { raw -> Void in
            guard case .frame(let header, 5, let length) = PeerFrameDecoder().decode(raw) else {
                Issue.record("not a frame")
                return
            }
            #expect(header.type == .hello && length == 14)
            #expect(PeerHello(body: UnsafeRawBufferPointer(rebasing: raw[5...])) == PeerHello(capabilities: 5))
        }
        #expect(PeerHello(body: UnsafeRawBufferPointer(start: nil, count: 0)) == nil)
    }
}
