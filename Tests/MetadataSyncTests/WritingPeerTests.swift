import Foundation
import HarpTestSupport
import Testing

/// A listed peer that writes metadata operations itself (future_peer.py): one stamped far
/// ahead of the node's clock is held back and reported, not applied (it would drag every
/// clock forward); a burst of 10,000 reaches a node that was stopped meanwhile.
@Suite("metadata from a writing peer", .serialized)
struct WritingPeerTests {
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

    @Test("a node that was stopped while 10,000 operations happened catches up when it comes back")
    func offlineForTenThousandOperations() throws {
        let a = try P2PNode(), c = try P2PNode(), writer = try P2PNode()
        defer { for node in [a, c, writer] { node.remove() } }
        for node in [a, c] {
            node.plugins = ["p2p", "crdt"]
            node.extraConfig = "[crdt]\nrescan_interval = \"1s\""
        }
        try a.configure(peers: [c, writer])
        try c.configure(peers: [a])
        try a.start()
        let id = try shell("openssl x509 -in \(writer.dir)/node.crt -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1").output
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("future_peer.py").path
        let now = UInt64(Date().timeIntervalSince1970 * 1000)
        let sent = try shell("timeout 60 python3 \(script) \(a.port) \(writer.dir)/node.crt \(writer.dir)/node.key \(id) \(now) burst:10000").output
        #expect(sent == "sent")
        func directories(_ node: P2PNode) -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: node.folder)) ?? []).filter { !$0.hasPrefix(".") }
        }
        var deadline = Date().addingTimeInterval(120)
        while Date() < deadline, directories(a).count < 5000 || directories(a).contains(where: { $0.hasPrefix("d") }) { usleep(200_000) }
        #expect(directories(a).count == 5000)
        // C was never up during all that: it gets the 10,000 operations in batches and ends
        // with the same 5,000 directories, renamed.
        try c.start()
        deadline = Date().addingTimeInterval(120)
        while Date() < deadline, directories(c).count < 5000 || directories(c).contains(where: { $0.hasPrefix("d") }) { usleep(200_000) }
        #expect(Set(directories(c)) == Set((0..<5000).map { "e\($0)" }))
        let log = try c.storage(["log", "--count", "1000"])["operations"] as? [[String: Any]] ?? []
        #expect(log.count == 1000)
    }
}
