import Foundation
import HarpTestSupport
import Testing

/// A peer stamping operations far ahead of the node's clock: held back and reported, not
/// applied (it would drag every clock forward).
@Suite("metadata clock skew")
struct ClockSkewTests {
    @Test("an operation stamped an hour ahead is held back with a log line; one a second ahead is applied")
    func heldBack() throws {
        let node = try P2PNode(), future = try P2PNode()
        defer { for peer in [node, future] { peer.remove() } }
        node.plugins = ["p2p", "crdt"]
        node.extraConfig = "[crdt]\nmax_clock_skew = \"5m\"\nrescan_interval = \"1s\""
        try node.configure(peers: [future])
        try node.start()
        // The future peer's node ID in hex: SHA-256 of its key's SubjectPublicKeyInfo.
        let id = try shell("openssl x509 -in \(future.dir)/node.crt -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1").output
        #expect(id.count == 64)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("future_peer.py").path
        let now = UInt64(Date().timeIntervalSince1970 * 1000)
        for (wall, name, sequence) in [(now + 3_600_000, "from-the-future", 2), (now + 1_000, "slightly-ahead", 1)] {
            let sent = try shell("timeout 20 python3 \(script) \(node.port) \(future.dir)/node.crt \(future.dir)/node.key \(id) \(wall) \(name) \(sequence)").output
            #expect(sent == "sent")
        }
        try node.process!.waitForOutput("held back an operation from \(future.id)")
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, !FileManager.default.fileExists(atPath: node.folder + "/slightly-ahead") { usleep(100_000) }
        #expect(FileManager.default.fileExists(atPath: node.folder + "/slightly-ahead"))
        #expect(!FileManager.default.fileExists(atPath: node.folder + "/from-the-future"))
        let names = (try node.storage(["ls"])["entries"] as? [[String: Any]] ?? []).map { $0["name"] as? String ?? "" }
        #expect(names == ["slightly-ahead"])
    }
}
