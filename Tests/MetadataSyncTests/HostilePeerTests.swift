import Foundation
import Glibc
import BlockExchange
import HarpKernel
import HarpTestSupport
@testable import MetadataSync
import Testing

/// An admitted peer that is compromised (`HostilePeer`: a real identity, harp's own encoder,
/// its own key): every frame it crafts against a real node is refused whole, with one log
/// line naming it and a count by reason, its session is closed and new ones are refused for a
/// while — and nothing outside the node's folder is ever touched.
@Suite("metadata from a hostile peer", .serialized)
struct HostilePeerTests {
    /// A node running p2p and crdt (with an admin endpoint), and a hostile peer it lists.
    static func victim() throws -> (node: P2PNode, hostile: P2PNode, friend: P2PNode, admin: UInt16) {
        let node = try P2PNode(), hostile = try P2PNode(), friend = try P2PNode()
        node.plugins = ["p2p", "crdt"]
        node.extraConfig = "[crdt]\nrescan_interval = \"1s\""
        let admin = freePort()
        try node.configure(peers: [hostile, friend], admin: admin)
        try node.start()
        return (node, hostile, friend, admin)
    }

    static func metric(_ name: String, admin: UInt16) throws -> Int {
        let socket = try TestSocket(connectingTo: loopback(admin))
        try socket.send(Array("GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".utf8))
        let text = String(decoding: try socket.receiveAll(), as: UTF8.self)
        let line = text.split(separator: "\n").first { $0.hasPrefix(name + " ") }
        return line.flatMap { Int($0.split(separator: " ").last!.split(separator: ".").first!) } ?? 0
    }

    /// The bytes of one move record whose name is `name` (any bytes at all: the real encoder
    /// writes only valid names), chained and signed by `peer` as its next operation.
    static func rawMove(_ peer: HostilePeer, sequence: UInt64, name: [UInt8]) -> [UInt8] {
        var writer = ByteWriter()
        writer.u8(1)
        writer.u64(sequence)
        writer.u64(HostilePeer.now)
        writer.u32(0)
        writer.raw(peer.id.bytes)
        writer.raw(ItemID(high: 7, low: sequence).bytes)
        writer.raw(ItemID.root.bytes)
        writer.u8(1)
        writer.prefixed16(name)
        let body = writer.bytes
        let digest = SHA256()
        digest.update(OperationChain.start(peer.id))
        digest.update(body)
        let chain = digest.finalize()
        writer.u8(1)
        writer.raw(peer.key.publicKey)
        writer.raw(peer.key.sign(OperationChain.message(origin: peer.id, sequence: sequence, chain: chain)))
        return writer.bytes
    }

    @Test("names that climb out of the folder, hide, break or overflow a path are refused; nothing outside is touched",
          arguments: [("..", "name_hidden_or_dot"), (".", "name_hidden_or_dot"), ("", "name_empty"), ("a/b", "name_separator"),
                      ("../escaped", "name_separator"), ("../../escaped", "name_separator"), ("x\u{0}y", "name_nul"),
                      (".harp-versions", "name_hidden_or_dot"), (".hidden", "name_hidden_or_dot"),
                      (String(repeating: "n", count: 256), "name_too_long"), ("\u{FFFF}invalid", "name_not_utf8")])
    func names(name: String, reason: String) throws {
        let (node, hostile, friend, admin) = try Self.victim()
        defer { for peer in [node, hostile, friend] { peer.remove() } }
        let peer = try HostilePeer(identity: hostile)
        try peer.connect(to: node)
        // "\u{FFFF}invalid" stands for bytes that are not UTF-8 at all.
        let bytes = name.hasPrefix("\u{FFFF}") ? [0xFF, 0xFE] + Array("invalid".utf8) : Array(name.utf8)
        try peer.send(type: SyncMessage.operationsType, body: [0] + Self.rawMove(peer, sequence: 1, name: bytes))
        #expect(try peer.closedByNode(), "the node closes the session of a peer that sent \(reason)")
        try node.process!.waitForOutput("refused a frame of peer \(hostile.id)")
        #expect(try Self.metric("harp_sync_refused_total{reason=\"\(reason)\"}", admin: admin) == 1)
        // Nothing in the folder, nothing beside it.
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: node.folder)) ?? []).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: node.dir + "/escaped"))
        #expect(!FileManager.default.fileExists(atPath: (node.dir as NSString).deletingLastPathComponent + "/escaped"))
        // Penalized: a new session is refused at once.
        let again = try HostilePeer(identity: hostile)
        try again.connect(to: node)
        #expect(try again.closedByNode(within: 5))
        try node.process!.waitForOutput("refused peer \(hostile.id): penalized")
        #expect(node.process!.process.isRunning)
    }

    @Test("an operation in another node's name is refused as forged; an unsigned one is not applied")
    func forgedOrigin() throws {
        let (node, hostile, friend, admin) = try Self.victim()
        defer { for peer in [node, hostile, friend] { peer.remove() } }
        let peer = try HostilePeer(identity: hostile)
        try peer.connect(to: node)
        // Unsigned in its own name: never proven, so never applied (and not punished: a run
        // may simply continue in the next batch).
        try peer.send(.operations([peer.move(1, name: "unsigned")]))
        // Signed with its own key, in the friend's name.
        let friendID = HostilePeer.id(of: friend)
        var forged = peer.move(1, name: "forged", origin: friendID)
        let chain = OperationChain.next(OperationChain.start(friendID), forged)
        forged.proof = OperationProof(publicKey: peer.key.publicKey,
                                      signature: peer.key.sign(OperationChain.message(origin: friendID, sequence: 1, chain: chain)))
        try peer.send(.operations([forged]))
        #expect(try peer.closedByNode())
        try node.process!.waitForOutput("signed with another node's key")
        #expect(try Self.metric("harp_sync_refused_total{reason=\"forged\"}", admin: admin) == 1)
        usleep(1_500_000)  // a pass of the folder
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: node.folder)) ?? []).isEmpty)
    }

    @Test("a sequence of 2^64 − 1 is refused; a clock counter of 2^32 − 1 is taken and the node's next change does not trap")
    func extremeValues() throws {
        let (node, hostile, friend, admin) = try Self.victim()
        defer { for peer in [node, hostile, friend] { peer.remove() } }
        let peer = try HostilePeer(identity: hostile)
        try peer.connect(to: node)
        try peer.send(.operations(peer.sign([peer.move(1, counter: .max, name: "counter-at-its-limit")])))
        #expect(waitUntil(timeout: 10) { FileManager.default.fileExists(atPath: node.folder + "/counter-at-its-limit") })
        // The node's clock now stands at that counter: its own next operation moves time on.
        try Data("local".utf8).write(to: URL(fileURLWithPath: node.folder + "/local.txt"))
        try node.process!.waitForOutput("local changes: created local.txt", timeout: 20)
        #expect(node.process!.process.isRunning)
        try peer.send(.operations(peer.sign([peer.move(.max, name: "overflow")])))
        #expect(try peer.closedByNode())
        #expect(try Self.metric("harp_sync_refused_total{reason=\"malformed\"}", admin: admin) == 1)
        #expect(node.process!.process.isRunning)
    }

    /// A settled-state part from the hostile peer: `placements`, the floor `floor` (with
    /// made-up chain hashes), the sender's clock at `wall`.
    static func settledPart(_ placements: [ItemID: ReplicatedTree.Placement], floor: [NodeID: UInt64], wall: UInt64 = HostilePeer.now,
                            index: Int = 0, total: Int = 1) -> SyncMessage {
        var settled = Replica.Settled()
        settled.placements = placements
        settled.floor = floor
        settled.floorChains = floor.mapValues { _ in [UInt8](repeating: 9, count: 32) }
        return .settled(SyncMessage.SettledPart(index: index, total: total, clock: (wall, 0), settled: settled, operations: []))
    }

    @Test("settled states that are not a tree, wipe the folder, claim the node's own future or come from the far future are refused",
          arguments: ["cycle", "own-floor", "leaves-out", "clock"])
    func settledStates(kind: String) throws {
        let (node, hostile, friend, admin) = try Self.victim()
        defer { for peer in [node, hostile, friend] { peer.remove() } }
        try FileManager.default.createDirectory(atPath: node.folder + "/kept", withIntermediateDirectories: false)
        try node.process!.waitForOutput("local changes: created kept", timeout: 20)
        let peer = try HostilePeer(identity: hostile)
        try peer.connect(to: node)
        let victim = NodeID(parsing: node.id)!, a = ItemID(high: 1, low: 1), b = ItemID(high: 1, low: 2)
        let message: SyncMessage
        switch kind {
        case "cycle":
            message = Self.settledPart([a: .init(parent: b, name: "a", isDirectory: true, at: HostilePeer.stamp), b: .init(parent: a, name: "b", isDirectory: true, at: HostilePeer.stamp)],
                                       floor: [peer.id: 1])
        case "own-floor":
            message = Self.settledPart([:], floor: [victim: 1_000])
        case "leaves-out":
            message = Self.settledPart([:], floor: [victim: 1, peer.id: 1])
        default:
            message = Self.settledPart([:], floor: [peer.id: 1], wall: HostilePeer.now + 10 * 365 * 86_400_000)
        }
        try peer.send(message)
        #expect(try peer.closedByNode())
        try node.process!.waitForOutput("a settled state that does not check")
        #expect(try Self.metric("harp_sync_refused_total{reason=\"settled_state\"}", admin: admin) == 1)
        usleep(1_500_000)  // a pass of the folder
        #expect(FileManager.default.fileExists(atPath: node.folder + "/kept"), "the folder keeps what the node has")
        let entries = (try node.storage(["ls"])["entries"] as? [[String: Any]] ?? []).map { $0["name"] as? String ?? "" }
        #expect(entries == ["kept"])
    }

    @Test("255 parts of a settled state that never completes are staged on disk: the node's memory stays within 64 MiB of where it was")
    func settledPartsMemory() throws {
        let (node, hostile, friend, _) = try Self.victim()
        defer { for peer in [node, hostile, friend] { peer.remove() } }
        let peer = try HostilePeer(identity: hostile)
        try peer.connect(to: node)
        func rss() -> Int {
            let status = (try? String(contentsOfFile: "/proc/\(node.process!.pid)/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
        }
        let before = rss()
        for index in 0..<255 {
            var placements: [ItemID: ReplicatedTree.Placement] = [:]
            for item in 0..<SyncMessage.settledPartSize {
                placements[ItemID(high: UInt64(index + 1), low: UInt64(item))] = .init(parent: .root, name: "p\(index)-\(item)", isDirectory: true, at: HostilePeer.stamp)
            }
            try peer.send(Self.settledPart(placements, floor: [peer.id: 1], index: index, total: 256))
        }
        #expect(!(try peer.closedByNode(within: 3)), "parts within the limits are no offence")
        let after = rss()
        #expect(after - before < 64 << 10, "RSS \(before) KiB before, \(after) KiB after 255 parts")
        #expect(node.process!.process.isRunning)
    }

    @Test("seeded random operations from a peer — deep trees, odd valid names, moves into the trash and into cycles, counters at their limit — through a real node's materializer: no crash, no stall, nothing outside, the folder shows the tree",
          arguments: [2026 as UInt64, 17])
    func randomOperationsThroughTheMaterializer(seed: UInt64) throws {
        print("seed \(seed)")
        let (node, hostile, friend, _) = try Self.victim()
        defer { for peer in [node, hostile, friend] { peer.remove() } }
        let outside = (node.dir as NSString).deletingLastPathComponent + "/harp-outside-\(seed)-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: outside) }
        let peer = try HostilePeer(identity: hostile)
        try peer.connect(to: node)
        var generator = SeededGenerator(seed: seed)
        let names = ["a", "b b", "Ω", "-rf", "*", "back\\slash", "new\nline", String(repeating: "n", count: 255), "ünï", "x..", "tab\t"]
        var directories: [ItemID] = [.root]
        var operations: [LoggedOperation] = []
        let now = HostilePeer.now
        for index in 0..<600 {
            let sequence = UInt64(index + 1), counter: UInt32 = index > 560 ? .max : UInt32(index)
            let roll = Int.random(in: 0..<10, using: &generator)
            if roll < 5 || directories.count < 3 {
                let item = ItemID(high: seed, low: UInt64(index))
                operations.append(peer.move(sequence, wall: now, counter: counter, item: item, parent: directories.randomElement(using: &generator)!,
                                            name: names.randomElement(using: &generator)!))
                directories.append(item)
            } else if roll < 8 {
                let item = directories.dropFirst().randomElement(using: &generator)!
                operations.append(peer.move(sequence, wall: now, counter: counter, item: item, parent: directories.randomElement(using: &generator)!,
                                            name: names.randomElement(using: &generator)!))
            } else {
                let item = directories.dropFirst().randomElement(using: &generator)!
                operations.append(peer.move(sequence, wall: now, counter: counter, item: item, parent: .trash, name: "gone"))
            }
        }
        for start in stride(from: 0, to: operations.count, by: 100) {
            try peer.send(.operations(peer.sign(Array(operations[start..<min(start + 100, operations.count)]))))
        }
        try node.process!.waitForOutput("applied", timeout: 20)
        // The folder settles: what `ls` shows is what is on disk, and nothing else.
        func shown(_ directory: String) throws -> Set<String> {
            let entries = try node.storage(["ls", directory])["entries"] as? [[String: Any]] ?? []
            var out: Set<String> = []
            for entry in entries {
                let path = directory.isEmpty ? entry["name"] as! String : directory + "/" + (entry["name"] as! String)
                out.insert(path)
                out.formUnion(try shown(path))
            }
            return out
        }
        func onDisk() -> Set<String> {
            var out: Set<String> = []
            let enumerator = FileManager.default.enumerator(atPath: node.folder)
            while let path = enumerator?.nextObject() as? String {
                if path.split(separator: "/").contains(where: { $0.hasPrefix(".") }) { continue }
                out.insert(path)
            }
            return out
        }
        var expected: Set<String> = []
        // `ls` fails until the node has taken the peer's operations in: asked again.
        _ = waitUntil(timeout: 30, interval: 0.5) {
            expected = (try? shown("")) ?? []
            return !expected.isEmpty && expected == onDisk()
        }
        #expect(!expected.isEmpty, "seed \(seed)")
        #expect(expected == onDisk(), "seed \(seed): the folder differs from the tree: \(expected.symmetricDifference(onDisk()).prefix(10))")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: outside)) ?? ["?"]).isEmpty, "seed \(seed): nothing outside")
        #expect(node.process!.process.isRunning)
    }
}
