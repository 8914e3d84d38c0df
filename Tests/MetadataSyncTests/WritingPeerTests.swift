import Foundation
import HarpTestSupport
@testable import MetadataSync
import Testing

/// A listed peer that writes metadata operations itself (`HostilePeer`, signing in its own
/// name as any node does): one stamped far ahead of the node's clock is held back and
/// reported, not applied (it would drag every clock forward); a burst of 10,000 reaches a node
/// that was stopped meanwhile.
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
        let peer = try HostilePeer(identity: future)
        try peer.connect(to: node)
        let now = HostilePeer.now
        // Its first operation is the slight one: the chain goes on in order, so the held-back
        // one (its second) waits without holding the first.
        let operations = peer.sign([peer.move(wall: now + 1_000, name: "slightly-ahead")])
            + peer.sign([peer.move(2, wall: now + 3_600_000, name: "from-the-future")])
        try peer.send(.operations(operations))
        try node.process!.waitForOutput("held back an operation from \(future.id)")
        #expect(waitUntil(timeout: 10) { FileManager.default.fileExists(atPath: node.folder + "/slightly-ahead") })
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
        let peer = try HostilePeer(identity: writer)
        try peer.connect(to: a)
        let now = HostilePeer.now
        // 5,000 directories created (d0, d1, …), then each renamed (e0, e1, …), in runs of
        // 2,000 signed as a writer's commits are.
        var created: [LoggedOperation] = []
        for index in 0..<5000 { created.append(peer.move(UInt64(index + 1), wall: now, counter: UInt32(index), name: "d\(index)")) }
        let renamed = created.enumerated().map { index, logged in
            peer.move(UInt64(5000 + index + 1), wall: now, counter: UInt32(5000 + index), item: logged.operation.item, name: "e\(index)")
        }
        let all = created + renamed
        for start in stride(from: 0, to: all.count, by: 2000) {
            try peer.send(.operations(peer.sign(Array(all[start..<min(start + 2000, all.count)]))))
        }
        func directories(_ node: P2PNode) -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: node.folder)) ?? []).filter { !$0.hasPrefix(".") }
        }
        _ = waitUntil(timeout: 120, interval: 0.2) { directories(a).count == 5000 && !directories(a).contains { $0.hasPrefix("d") } }
        #expect(directories(a).count == 5000)
        // C was never up during all that: it gets the 10,000 operations in batches (relayed by
        // A with the writer's proofs) and ends with the same 5,000 directories, renamed.
        try c.start()
        _ = waitUntil(timeout: 120, interval: 0.2) { directories(c).count == 5000 && !directories(c).contains { $0.hasPrefix("d") } }
        #expect(Set(directories(c)) == Set((0..<5000).map { "e\($0)" }))
        let log = try c.storage(["log", "--count", "1000"])["operations"] as? [[String: Any]] ?? []
        #expect(log.count == 1000)
    }
}
