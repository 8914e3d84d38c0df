import Foundation
@testable import BlockExchange
import HarpKernel
import HarpTestSupport
@testable import MetadataSync
import Testing

/// Many small files on real nodes: local changes are published while remote content still
/// arrives, a holder that never answers holds up nothing else, and a kill in the middle of a
/// batch leaves only whole files at their paths. (Speed is `bench/sync.sh`'s business.)
@Suite("p2p storage: many small files", .serialized)
struct SmallFilesTests {
    /// Two nodes that notice changes by inotify alone (the periodic rescan an hour away), a
    /// change taken as settled after 1 s.
    static func pair(downloadRate: Int = 0) throws -> (a: P2PNode, b: P2PNode) {
        try FolderSafetyTests.pair(downloadRate: downloadRate, rescanInterval: "1h", stableAfter: "1s")
    }

    /// `count` files of 1–`maxSize` bytes (random, seeded) in directories of 100, on `node`,
    /// numbered from `first`.
    static func write(_ count: Int, maxSize: Int, on node: P2PNode, first: Int = 0) throws -> [String: Data] {
        var generator = SeededGenerator(seed: 24 + UInt64(first))
        var written: [String: Data] = [:]
        for number in first..<first + count {
            let directory = String(format: "d%03d", number / 100)
            try FileManager.default.createDirectory(atPath: node.folder + "/" + directory, withIntermediateDirectories: true)
            let size = Int.random(in: 1024...maxSize, using: &generator)
            let bytes = Data((0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) })
            let path = directory + String(format: "/f%05d", number)
            try bytes.write(to: URL(fileURLWithPath: node.folder + "/" + path))
            written[path] = bytes
        }
        return written
    }

    /// The regular files under `node`'s folder (relative), hidden names aside.
    static func files(_ node: P2PNode) -> [String] {
        let all = FileManager.default.enumerator(atPath: node.folder)?.allObjects as? [String] ?? []
        return all.filter { path in
            !path.split(separator: "/").contains { $0.hasPrefix(".") } && !((try? FileManager.default.attributesOfItem(atPath: node.folder + "/" + path))?[.type] as? FileAttributeType == .typeDirectory)
        }
    }

    /// The names at the top of `node`'s tree (`harp storage ls`).
    static func shown(_ node: P2PNode) -> Set<String> {
        let entries = (try? node.storage(["ls"]))?["entries"] as? [[String: Any]] ?? []
        return Set(entries.compactMap { $0["name"] as? String })
    }

    @Test("5,000 small files arriving: a local change made meanwhile is published within stable_after + 1 s, and every file arrives whole")
    func localChangeWhileReceiving() throws {
        // B downloads at 1 MiB/s: the 5,000 files (1–4 KiB, ~12 MB) take it about 12 s.
        let (a, b) = try Self.pair(downloadRate: 1 << 20)
        defer { for node in [a, b] { node.remove() } }
        let written = try Self.write(5_000, maxSize: 4096, on: a)
        try FolderSafetyTests.waitFor("the first files on B", timeout: 60) { Self.files(b).count >= 200 }
        try Data("made on B\n".utf8).write(to: URL(fileURLWithPath: b.folder + "/local.txt"))
        let made = Date()
        try FolderSafetyTests.waitFor("local.txt in B's tree", timeout: 30) { Self.shown(b).contains("local.txt") }
        let took = Date().timeIntervalSince(made)
        let arrived = Self.files(b).count
        print("small files: a local change published \((took * 100).rounded() / 100) s after it was made, with \(arrived) of 5,000 files on B")
        // stable_after + 1 s is the goal (1.4 s here alone); the bound leaves a second for this
        // poll's own `harp storage ls` processes on a loaded 2-core CI (1.9 s seen there).
        #expect(took <= 3.0, "published \(took) s after it was made (stable_after 1 s)")
        #expect(arrived < 5_000, "published while the remote files were still arriving")
        // Status shows what is left and the pace.
        let content = try b.storage(["status"])["content"] as? [String: Any] ?? [:]
        #expect((content["pending_files"] as? Int ?? 0) > 0 && (content["pending_bytes"] as? Int ?? 0) > 0
                    && (content["files_per_second"] as? Double ?? 0) > 0 && (content["bytes_per_second"] as? Double ?? 0) > 0, "status: \(content)")
        try FolderSafetyTests.waitFor("local.txt on A", timeout: 60) { EverydayActionTests.read(a, "local.txt") == "made on B\n" }
        try FolderSafetyTests.waitFor("the 5,000 files on B", timeout: 120) { Self.files(b).count == 5_001 }
        for (path, bytes) in written {
            #expect(FileManager.default.contents(atPath: b.folder + "/" + path) == bytes, "\(path) arrived whole")
        }
    }

    @Test("a peer that announces 12 files and never sends them holds up nothing else: another peer's 200 files and a local change go on, and status counts the 12")
    func holderThatNeverAnswers() throws {
        let (node, silent, friend, _) = try HostilePeerTests.victim()
        defer { for peer in [node, silent, friend] { peer.remove() } }
        friend.plugins = ["p2p", "crdt"]
        friend.extraConfig = "[crdt]\nrescan_interval = \"1s\"\n"
        try friend.configure(peers: [node])
        try friend.start()
        try node.waitConnected(to: [friend])
        // The silent peer: 12 files whose content only it could send — it never answers.
        let peer = try HostilePeer(identity: silent)
        try peer.connect(to: node)
        var operations: [LoggedOperation] = []
        for number in 0..<12 {
            let wall = HostilePeer.now
            let create = peer.move(UInt64(operations.count + 1), wall: wall, counter: UInt32(2 * number), name: "ghost\(number).bin", directory: false)
            guard case .move(let move) = create.operation else { continue }
            operations.append(create)
            let root = ChunkID(bytes: (0..<32).map { _ in UInt8.random(in: 0...255) })
            operations.append(LoggedOperation(origin: peer.id, sequence: UInt64(operations.count + 1), operation: .version(
                .init(timestamp: HLCTimestamp(wall: wall, counter: UInt32(2 * number + 1), node: peer.id), item: move.item, root: root, size: 4096, mtime: 0,
                      base: nil))))
        }
        try peer.send(.operations(peer.sign(operations)))
        try FolderSafetyTests.waitFor("the 12 files in the node's tree; its log: \(node.log.suffix(1500))") {
            let shown = Self.shown(node)
            return (0..<12).allSatisfy { shown.contains("ghost\($0).bin") }
        }
        // Meanwhile the friend's 200 files, and a local change on the node.
        let written = try Self.write(200, maxSize: 16384, on: friend)
        try Data("local\n".utf8).write(to: URL(fileURLWithPath: node.folder + "/local.txt"))
        try FolderSafetyTests.waitFor("the friend's 200 files on the node", timeout: 30) {
            written.allSatisfy { FileManager.default.contents(atPath: node.folder + "/" + $0.key) == $0.value }
        }
        try FolderSafetyTests.waitFor("local.txt on the friend", timeout: 30) { EverydayActionTests.read(friend, "local.txt") == "local\n" }
        #expect(!FileManager.default.fileExists(atPath: node.folder + "/ghost0.bin"), "nothing was made up for a file nobody sent")
        let content = try node.storage(["status"])["content"] as? [String: Any] ?? [:]
        #expect(content["pending_files"] as? Int == 12 && content["pending_bytes"] as? Int == 12 * 4096, "status: \(content)")
        peer.close()
    }

    @Test("small files two peers hold reach a third node once: from the node that wrote them while it is connected, else from the other (get-whole, no byte twice)")
    func smallFilesFromTwoHolders() throws {
        let nodes = try (0..<3).map { _ in try P2PNode() }
        defer { for node in nodes { node.remove() } }
        for node in nodes {
            node.plugins = ["p2p", "crdt"]
            node.extraConfig = "[crdt]\nrescan_interval = \"1h\"\nstable_after = \"200ms\"\n"
        }
        try P2PNode.mesh(nodes)
        let (a, b, c) = (nodes[0], nodes[1], nodes[2])
        /// What C received from each peer (chunk bytes), by node ID.
        func received() throws -> [String: Int] {
            let peers = try c.storage(["status"])["peers"] as? [[String: Any]] ?? []
            return Dictionary(uniqueKeysWithValues: peers.map { ($0["id"] as? String ?? "", $0["bytes_received"] as? Int ?? 0) })
        }
        func arrived(_ files: [String: Data], on node: P2PNode) -> Bool {
            files.allSatisfy { FileManager.default.contents(atPath: node.folder + "/" + $0.key) == $0.value }
        }
        for node in nodes { try node.start() }
        try c.waitConnected(to: [a, b])
        try b.waitConnected(to: [a])
        // A writes 150 files while B and C run: C takes each from A, the writer, once.
        let first = try Self.write(150, maxSize: 16384, on: a)
        try FolderSafetyTests.waitFor("the first 150 files on B and C", timeout: 60) { arrived(first, on: b) && arrived(first, on: c) }
        let fromA = try received()
        #expect(fromA["\(a.id)"] == first.values.reduce(0) { $0 + $1.count } && fromA["\(b.id)"] == 0, "\(fromA) for \(first.values.reduce(0) { $0 + $1.count }) bytes")
        // 150 more while C is stopped; then A stops and C starts: all from B, once each.
        try c.stop()
        let second = try Self.write(150, maxSize: 16384, on: a, first: 150)
        try FolderSafetyTests.waitFor("the next 150 files on B", timeout: 60) { arrived(second, on: b) }
        try a.stop()
        try c.start()
        do {
            try FolderSafetyTests.waitFor("the next 150 files on C, from B", timeout: 60) { arrived(second, on: c) }
        } catch {
            throw TestFailure("\(error)\nC's log: \(c.log.suffix(4000))\nB's log: \(b.log.suffix(3000))")
        }
        let fromB = try received()
        #expect(fromB["\(b.id)"] == second.values.reduce(0) { $0 + $1.count } && fromB["\(a.id)"] == 0, "\(fromB)")
    }

    @Test("the writer of a small file, asked for it whole, sends other bytes: the node takes it from another peer at once, and the liar gets a strike")
    func wholeFileFromALiar() throws {
        let (node, liar, friend, _) = try HostilePeerTests.victim()
        defer { for peer in [node, liar, friend] { peer.remove() } }
        // The friend holds the bytes where it does not sync them (its own ignored directory):
        // the node can only get them by asking it.
        let bytes = (0..<4096).map { _ in UInt8.random(in: 0...255) }
        try FileManager.default.createDirectory(atPath: friend.folder + "/private", withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: friend.folder + "/private/c.bin"))
        try "private/\n".write(toFile: friend.folder + "/.harpignore", atomically: true, encoding: .utf8)
        friend.plugins = ["p2p", "crdt"]
        try friend.configure(peers: [node])
        try friend.start()
        try node.waitConnected(to: [friend])
        let digest = SHA256()
        digest.update(bytes)
        let chunk = ChunkID(bytes: digest.finalize())
        let manifest = Manifest(entries: [Manifest.Entry(id: chunk, length: bytes.count)])
        // The liar writes a file of that content (so it is asked for it whole) ...
        let peer = try HostilePeer(identity: liar)
        try peer.connect(to: node)
        let create = peer.move(1, name: "lie.bin", directory: false)
        guard case .move(let move) = create.operation else { return }
        let version = LoggedOperation(origin: peer.id, sequence: 2, operation: .version(
            .init(timestamp: HLCTimestamp(wall: HostilePeer.now, counter: 1, node: peer.id), item: move.item, root: manifest.root,
                  size: bytes.count, mtime: 0, base: nil)))
        try peer.send(.operations(peer.sign([create, version])))
        // ... and answers the get-whole with the right manifest and other bytes.
        let asked = try peer.frame(of: PeerFrameType.getWhole.rawValue)
        #expect(asked == manifest.root.bytes, "the node asked the file's writer for it whole")
        try peer.send(type: PeerFrameType.manifest.rawValue, body: Array(PeerMessage.manifest(manifest.root, manifest).frame.dropFirst(PeerFrameHeader.size)))
        try peer.send(type: PeerFrameType.chunk.rawValue, body: chunk.bytes + [UInt8](repeating: 0x41, count: bytes.count))
        // The friend is asked at once (not after the 10 s a stalled download waits).
        let sent = Date()
        try FolderSafetyTests.waitFor("lie.bin with the right bytes on the node", timeout: 8) {
            FileManager.default.contents(atPath: node.folder + "/lie.bin") == Data(bytes)
        }
        print("small files: a lying writer's file came from another peer \(String(format: "%.2f", Date().timeIntervalSince(sent))) s after the bad chunk")
        #expect(node.log.contains("with other bytes: discarded"), "\(node.log.suffix(1500))")
        peer.close()
    }

    @Test("kill -9 while 2,000 small files land: every file at its path is whole, and after a restart all arrive, each once, nothing deleted")
    func killDuringBatch() throws {
        let (a, b) = try Self.pair()
        defer { for node in [a, b] { node.remove() } }
        let written = try Self.write(2_000, maxSize: 16384, on: a)
        try FolderSafetyTests.waitFor("some files on B", timeout: 60) { Self.files(b).count >= 300 }
        try b.kill()
        let landed = Self.files(b)
        #expect(landed.count < 2_000, "killed in the middle of the batch (\(landed.count) had landed)")
        for path in landed {
            #expect(FileManager.default.contents(atPath: b.folder + "/" + path) == written[path], "\(path) is whole or absent, never partial")
        }
        // A partial file no download resumes (as an older run could leave).
        try Data("stray".utf8).write(to: URL(fileURLWithPath: b.folder + "/.harp-staging/.stray.harp-partial"))
        try b.start()
        try FolderSafetyTests.waitFor("the 2,000 files on B after the restart", timeout: 120) { Self.files(b).count == 2_000 }
        for (path, bytes) in written {
            #expect(FileManager.default.contents(atPath: b.folder + "/" + path) == bytes, "\(path) arrived whole")
        }
        // What the kill left half-fetched was swept at the restart (a one-chunk download has no
        // record to resume from), and everything fetched since was renamed out.
        try FolderSafetyTests.waitFor("an empty staging directory on B") {
            ((try? FileManager.default.contentsOfDirectory(atPath: b.folder + "/.harp-staging")) ?? []).isEmpty
        }
        for node in [a, b] {
            let deleted = try node.storage(["ls", "--deleted"])["entries"] as? [[String: Any]] ?? []
            #expect(deleted.isEmpty, "nothing deleted on \(node.id): \(deleted.prefix(5))")
            let history = try node.storage(["history", "d000/f00000"])["versions"] as? [[String: Any]] ?? []
            #expect(history.count == 1, "one version, on \(node.id): \(history)")
        }
    }
}
