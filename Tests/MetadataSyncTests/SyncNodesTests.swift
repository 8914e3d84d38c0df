import Foundation
import HarpTestSupport
import Testing

/// P2P storage mode on three real harp nodes (`p2p` + `crdt`) on loopback: what a user does
/// in one folder shows in the others; edits made apart become one path with a history.
@Suite("metadata sync between real nodes", .serialized)
struct SyncNodesTests {
    let nodes: [P2PNode]

    init() throws {
        nodes = try (0..<3).map { _ in
            let node = try P2PNode()
            node.plugins = ["p2p", "crdt"]
            node.extraConfig = "[crdt]\nrescan_interval = \"1s\"\nstable_after = \"200ms\""
            return node
        }
        try P2PNode.mesh(nodes)
    }

    func startAll() throws {
        for node in nodes { try node.start() }
        for node in nodes { try node.waitConnected(to: nodes.filter { $0 !== node }) }
    }

    func removeAll() { for node in nodes { node.remove() } }

    /// Polls until `condition` holds (20 s at most).
    func eventually(_ what: String, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(20)
        while !condition() {
            guard Date() < deadline else {
                let logs = nodes.map { "\($0.id.prefix(9)) files \(files($0)):\n\($0.log.suffix(1500))" }.joined(separator: "\n---\n")
                throw TestFailure("not within 20 s: \(what)\n\(logs)")
            }
            usleep(100_000)
        }
    }

    func read(_ node: P2PNode, _ path: String) -> String? { try? String(contentsOfFile: node.folder + "/" + path, encoding: .utf8) }

    func files(_ node: P2PNode) -> [String] {
        (FileManager.default.enumerator(atPath: node.folder)?.allObjects as? [String] ?? []).filter { !$0.hasPrefix(".") }.sorted()
    }

    @Test("a file and a directory made on one node appear on the others; a rename and a delete follow")
    func dropRenameDelete() throws {
        defer { removeAll() }
        try startAll()
        let (a, b, c) = (nodes[0], nodes[1], nodes[2])
        try "hello\n".write(toFile: a.folder + "/a.txt", atomically: false, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: a.folder + "/docs", withIntermediateDirectories: true)
        try "world\n".write(toFile: a.folder + "/docs/b.txt", atomically: false, encoding: .utf8)
        for node in [b, c] {
            try eventually("a.txt and docs/b.txt on \(node.id)") { read(node, "a.txt") == "hello\n" && read(node, "docs/b.txt") == "world\n" }
        }
        // A rename on disk is a move: same item, nothing fetched again.
        try FileManager.default.moveItem(atPath: b.folder + "/docs", toPath: b.folder + "/papers")
        for node in [a, c] { try eventually("docs renamed to papers on \(node.id)") { files(node) == ["a.txt", "papers", "papers/b.txt"] } }
        try FileManager.default.removeItem(atPath: c.folder + "/papers/b.txt")
        for node in [a, b] { try eventually("papers/b.txt deleted on \(node.id)") { files(node) == ["a.txt", "papers"] } }
        // The deleted bytes stay in the version store.
        let store = a.folder + "/.harp-versions/"
        let stored = try FileManager.default.contentsOfDirectory(atPath: store)
        #expect(stored.contains { (try? String(contentsOfFile: store + $0, encoding: .utf8)) == "world\n" })
        // .harpignore: what it names stays local.
        try "*.tmp\nbuild/\n".write(toFile: a.folder + "/.harpignore", atomically: false, encoding: .utf8)
        try "scratch\n".write(toFile: a.folder + "/x.tmp", atomically: false, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: a.folder + "/build", withIntermediateDirectories: true)
        try "out\n".write(toFile: a.folder + "/build/o", atomically: false, encoding: .utf8)
        try "kept\n".write(toFile: a.folder + "/kept.txt", atomically: false, encoding: .utf8)
        try eventually("kept.txt on B") { read(b, "kept.txt") == "kept\n" }
        #expect(files(b) == ["a.txt", "kept.txt", "papers"], "ignored names stay on A")
        let listing = try a.storage(["ls"])["entries"] as? [[String: Any]] ?? []
        #expect(listing.map { $0["name"] as? String ?? "" } == ["a.txt", "kept.txt", "papers"])
        #expect(listing.first?["type"] as? String == "file" && listing.first?["size"] as? Int == 6)
    }

    @Test("one file edited on two nodes while one is stopped: one path, both versions, the other marked concurrent; restore adds a version")
    func editsWhileApart() throws {
        defer { removeAll() }
        try startAll()
        let (a, b, c) = (nodes[0], nodes[1], nodes[2])
        try "original\n".write(toFile: a.folder + "/report.txt", atomically: false, encoding: .utf8)
        for node in [b, c] { try eventually("report.txt on \(node.id)") { read(node, "report.txt") == "original\n" } }
        try c.stop()
        try "edited on A\n".write(toFile: a.folder + "/report.txt", atomically: false, encoding: .utf8)
        try eventually("A's edit on B") { read(b, "report.txt") == "edited on A\n" }
        try "edited on C while apart\n".write(toFile: c.folder + "/report.txt", atomically: false, encoding: .utf8)
        try c.start()
        let converged = { Set(self.nodes.map { self.read($0, "report.txt") ?? "" }).count == 1 }
        try eventually("all three agree on report.txt", converged)
        let history = try b.storage(["history", "report.txt"])
        let versions = history["versions"] as? [[String: Any]] ?? []
        #expect(versions.count == 3, "\(versions)")
        #expect(versions.map { $0["n"] as? Int ?? 0 } == [1, 2, 3])
        #expect(versions.last?["head"] as? Bool == true)
        #expect(versions.filter { $0["concurrent"] as? Bool == true }.count == 1, "one of the two edits was made from the original")
        for node in nodes { #expect(files(node) == ["report.txt"], "no conflict copy on \(node.id)") }
        // Restore version 1 on B: every node shows it, and the history has grown by one.
        _ = try b.storage(["restore", "report.txt", "--version", "1"])
        for node in nodes { try eventually("version 1 restored on \(node.id)") { read(node, "report.txt") == "original\n" } }
        #expect((try a.storage(["history", "report.txt"])["versions"] as? [[String: Any]])?.count == 4)
        let missing = try HarpProcess.run(["storage", "history", "nope.txt", "--config", a.configPath])
        #expect(missing.status != 0 && missing.stderr.contains("nope.txt is not a file in the folder"), "\(missing.stderr)")
    }
}

extension SyncNodesTests {
    @Test("the move cycle on real nodes: /a into /b on one while /b goes into /a on a stopped one; the later move is skipped")
    func moveCycle() throws {
        defer { removeAll() }
        try startAll()
        let (a, b, c) = (nodes[0], nodes[1], nodes[2])
        for name in ["a", "b"] { try FileManager.default.createDirectory(atPath: a.folder + "/" + name, withIntermediateDirectories: true) }
        try "in a\n".write(toFile: a.folder + "/a/f", atomically: false, encoding: .utf8)
        for node in [b, c] { try eventually("a/f and b on \(node.id)") { files(node) == ["a", "a/f", "b"] } }
        try c.stop()
        try FileManager.default.moveItem(atPath: a.folder + "/a", toPath: a.folder + "/b/a")
        try eventually("a moved into b on B") { files(b) == ["b", "b/a", "b/a/f"] }
        try FileManager.default.moveItem(atPath: c.folder + "/b", toPath: c.folder + "/a/b")
        try c.start()
        for node in nodes { try eventually("one tree, b/a, on \(node.id)") { files(node) == ["b", "b/a", "b/a/f"] } }
    }

    @Test("delete on one node, a later edit on a stopped one: the file comes back everywhere with its whole history")
    func deleteThenLaterEdit() throws {
        defer { removeAll() }
        try startAll()
        let (a, b, c) = (nodes[0], nodes[1], nodes[2])
        try "v1\n".write(toFile: a.folder + "/f.txt", atomically: false, encoding: .utf8)
        for node in [b, c] { try eventually("f.txt on \(node.id)") { read(node, "f.txt") == "v1\n" } }
        try c.stop()
        try FileManager.default.removeItem(atPath: a.folder + "/f.txt")
        try eventually("f.txt deleted on B") { read(b, "f.txt") == nil }
        try "v2 from C\n".write(toFile: c.folder + "/f.txt", atomically: false, encoding: .utf8)
        try c.start()
        for node in nodes { try eventually("f.txt back on \(node.id)") { read(node, "f.txt") == "v2 from C\n" } }
        let versions = try a.storage(["history", "f.txt"])["versions"] as? [[String: Any]] ?? []
        #expect(versions.count == 2, "\(versions)\n\(c.log.suffix(2500))")
    }
}

/// kill -9 in the middle of things: nothing acknowledged is lost, nothing is created twice,
/// and no partial file is left at a synced path.
@Suite("metadata sync after kill -9", .serialized)
struct CrashTests {
    @Test("kill -9 of the writer during a burst of 300 new files, and of the reader while it fetches them")
    func killDuringBurstAndMaterialization() throws {
        let a = try P2PNode(), b = try P2PNode()
        defer { for node in [a, b] { node.remove() } }
        for node in [a, b] {
            node.plugins = ["p2p", "crdt"]
            node.extraConfig = "[crdt]\nrescan_interval = \"1s\"\nstable_after = \"200ms\""
        }
        try P2PNode.mesh([a, b])
        for node in [a, b] { try node.start() }
        try b.waitConnected(to: [a])
        let count = 300
        try FileManager.default.createDirectory(atPath: a.folder + "/burst", withIntermediateDirectories: true)
        for number in 0..<count {
            try "file \(number)\n".write(toFile: a.folder + "/burst/\(number).txt", atomically: false, encoding: .utf8)
        }
        // The writer dies while it turns the burst into operations; the reader while it fetches.
        usleep(400_000)
        try a.kill()
        try a.start()
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, ((try? FileManager.default.contentsOfDirectory(atPath: b.folder + "/burst"))?.count ?? 0) < count / 3 {
            usleep(20_000)
        }
        try b.kill()
        try b.start()
        while Date() < deadline {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: b.folder + "/burst")) ?? []
            if names.filter({ !$0.hasPrefix(".") }).count == count { break }
            usleep(100_000)
        }
        let names = try FileManager.default.contentsOfDirectory(atPath: b.folder + "/burst")
        #expect(names.filter { !$0.hasPrefix(".") }.count == count, "\(names.count) files arrived")
        for number in [0, count / 2, count - 1] {
            #expect((try? String(contentsOfFile: b.folder + "/burst/\(number).txt", encoding: .utf8)) == "file \(number)\n")
        }
        // One item per file on both nodes: nothing was created twice by the restarted writer.
        for node in [a, b] {
            let entries = try node.storage(["ls", "burst"])["entries"] as? [[String: Any]] ?? []
            #expect(entries.count == count, "\(entries.count) entries on \(node.id)")
            let history = try node.storage(["history", "burst/0.txt"])["versions"] as? [[String: Any]] ?? []
            #expect(history.count == 1, "\(history)")
        }
        // Partial files are hidden while they fill and gone once renamed into place.
        let deadlineQuiet = Date().addingTimeInterval(20)
        while Date() < deadlineQuiet, try FileManager.default.contentsOfDirectory(atPath: b.folder + "/burst").contains(where: { $0.hasPrefix(".") }) {
            usleep(100_000)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: b.folder + "/burst").allSatisfy { !$0.hasPrefix(".") })
    }
}
