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
        try HarpTestSupport.eventually(what, interval: 0.1, context: {
            nodes.map { "\($0.id.prefix(9)) files \(files($0)):\n\($0.log.suffix(4000))" }.joined(separator: "\n---\n")
        }, condition)
    }

    func read(_ node: P2PNode, _ path: String) -> String? { try? String(contentsOfFile: node.folder + "/" + path, encoding: .utf8) }

    func files(_ node: P2PNode) -> [String] {
        (FileManager.default.enumerator(atPath: node.folder)?.allObjects as? [String] ?? []).filter { !$0.hasPrefix(".") }.sorted()
    }

    func write(_ node: P2PNode, _ path: String, _ text: String) throws {
        try text.write(toFile: node.folder + "/" + path, atomically: false, encoding: .utf8)
    }

    func move(_ node: P2PNode, _ from: String, to: String) throws {
        try FileManager.default.moveItem(atPath: node.folder + "/" + from, toPath: node.folder + "/" + to)
    }

    /// Makes `directories` and writes `contents` (path → text) on A; waits until B and C show
    /// the same tree.
    func seed(directories: [String] = [], _ contents: [String: String]) throws {
        let a = nodes[0]
        for name in directories { try FileManager.default.createDirectory(atPath: a.folder + "/" + name, withIntermediateDirectories: true) }
        for (path, text) in contents { try write(a, path, text) }
        for node in nodes.dropFirst() {
            try eventually("A's tree on \(node.id)") { files(node) == files(a) && contents.allSatisfy { read(node, $0.key) == $0.value } }
        }
    }

    /// A partition: C stops; A changes the folder (`onA`) until B shows it (`seenOnB`); C's
    /// folder is changed while C is stopped (`onC`: stamped when C starts, after A's); C rejoins.
    func apart(onA: () throws -> Void, seenOnB: () -> Bool, onC: () throws -> Void) throws {
        try nodes[2].stop()
        try onA()
        try eventually("A's change on B", seenOnB)
        // C's change must be later than A's by the clocks that stamp them: C's is stamped from
        // the file's mtime, which the kernel takes from its coarse clock (up to a jiffy, 10 ms,
        // behind), so a write a few milliseconds after A's delete can look older than it.
        // (Deciding "concurrently" causally instead of by time is the open item in
        // docs/p2p-storage.md, "Not yet".)
        Thread.sleep(forTimeInterval: 0.02)
        try onC()
        try nodes[2].start()
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
        try seed(["report.txt": "original\n"])
        try apart(onA: { try write(a, "report.txt", "edited on A\n") }, seenOnB: { read(b, "report.txt") == "edited on A\n" },
                  onC: { try write(c, "report.txt", "edited on C while apart\n") })
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
        try seed(directories: ["a", "b"], ["a/f": "in a\n"])
        try apart(onA: { try move(a, "a", to: "b/a") }, seenOnB: { files(b) == ["b", "b/a", "b/a/f"] }, onC: { try move(c, "b", to: "a/b") })
        for node in nodes { try eventually("one tree, b/a, on \(node.id)") { files(node) == ["b", "b/a", "b/a/f"] } }
    }

    @Test("delete on one node, a later edit on a stopped one: the file comes back everywhere with its whole history")
    func deleteThenLaterEdit() throws {
        defer { removeAll() }
        try startAll()
        let (a, b, c) = (nodes[0], nodes[1], nodes[2])
        try seed(["f.txt": "v1\n"])
        try apart(onA: { try FileManager.default.removeItem(atPath: a.folder + "/f.txt") }, seenOnB: { read(b, "f.txt") == nil },
                  onC: { try write(c, "f.txt", "v2 from C\n") })
        for node in nodes { try eventually("f.txt back on \(node.id)") { read(node, "f.txt") == "v2 from C\n" } }
        let versions = try a.storage(["history", "f.txt"])["versions"] as? [[String: Any]] ?? []
        #expect(versions.count == 2, "\(versions)\n\(c.log.suffix(2500))")
    }
}

extension SyncNodesTests {
    @Test("one directory moved to two places, on two nodes while apart: it ends in one place (the later move), once, with its file")
    func concurrentMoves() throws {
        defer { removeAll() }
        try startAll()
        let (a, b, c) = (nodes[0], nodes[1], nodes[2])
        try seed(directories: ["d", "x", "y"], ["d/f": "inside\n"])
        try apart(onA: { try move(a, "d", to: "x/d") }, seenOnB: { files(b) == ["x", "x/d", "x/d/f", "y"] }, onC: { try move(c, "d", to: "y/d") })
        for node in nodes { try eventually("d only under y on \(node.id)") { files(node) == ["x", "y", "y/d", "y/d/f"] } }
        #expect(read(a, "y/d/f") == "inside\n")
    }

    @Test("a directory renamed on one node while a file inside is edited on a stopped one: the edit lands under the new name")
    func renameWhileEditing() throws {
        defer { removeAll() }
        try startAll()
        let (a, b, c) = (nodes[0], nodes[1], nodes[2])
        try seed(directories: ["proj"], ["proj/notes.txt": "draft\n"])
        try apart(onA: { try move(a, "proj", to: "project") }, seenOnB: { files(b) == ["project", "project/notes.txt"] },
                  onC: { try write(c, "proj/notes.txt", "draft, edited on C\n") })
        for node in nodes {
            try eventually("C's edit in project/ on \(node.id)") {
                files(node) == ["project", "project/notes.txt"] && read(node, "project/notes.txt") == "draft, edited on C\n"
            }
        }
        let versions = try a.storage(["history", "project/notes.txt"])["versions"] as? [[String: Any]] ?? []
        #expect(versions.count == 2 && versions.allSatisfy { $0["concurrent"] as? Bool == false }, "\(versions)")
    }

    @Test("a directory deleted on one node while a file inside is edited on a stopped one: the file comes back with its directories, alone")
    func editInsideDeletedDirectory() throws {
        defer { removeAll() }
        try startAll()
        let (a, b, c) = (nodes[0], nodes[1], nodes[2])
        try seed(directories: ["project", "project/src"], ["project/src/main.c": "v1\n", "project/notes.txt": "notes\n"])
        try apart(onA: { try FileManager.default.removeItem(atPath: a.folder + "/project") }, seenOnB: { files(b).isEmpty },
                  onC: { try write(c, "project/src/main.c", "v2 from C\n") })
        for node in nodes {
            try eventually("main.c back, alone, on \(node.id)") {
                files(node) == ["project", "project/src", "project/src/main.c"] && read(node, "project/src/main.c") == "v2 from C\n"
            }
        }
        let deleted = (try b.storage(["ls", "--deleted", "project"])["entries"] as? [[String: Any]] ?? []).map { $0["name"] as? String ?? "" }
        #expect(deleted == ["notes.txt"], "\(deleted)")
    }

    @Test("an edit on one node, a later delete on a stopped one: the file is gone everywhere, the edited bytes stay in the version store")
    func editThenLaterDelete() throws {
        defer { removeAll() }
        try startAll()
        let (a, b, c) = (nodes[0], nodes[1], nodes[2])
        try seed(["f.txt": "v1\n"])
        try apart(onA: { try write(a, "f.txt", "v2 from A\n") }, seenOnB: { read(b, "f.txt") == "v2 from A\n" },
                  onC: { try FileManager.default.removeItem(atPath: c.folder + "/f.txt") })
        for node in nodes { try eventually("f.txt gone on \(node.id)") { files(node).isEmpty } }
        for node in [a, b] {
            let store = node.folder + "/.harp-versions/"
            let stored = (try? FileManager.default.contentsOfDirectory(atPath: store)) ?? []
            #expect(stored.contains { (try? String(contentsOfFile: store + $0, encoding: .utf8)) == "v2 from A\n" }, "\(node.id): \(stored)")
        }
        let listing = try b.storage(["ls"])["entries"] as? [[String: Any]] ?? []
        #expect(listing.isEmpty, "\(listing)")
    }

    @Test("a node that joins after moves settled gets the settled state from a peer: the whole tree, with histories")
    func lateJoiner() throws {
        defer { removeAll() }
        let (a, b, c) = (nodes[0], nodes[1], nodes[2])
        try P2PNode.mesh([a, b])  // C is not a replica yet
        for node in [a, b] { try node.start() }
        try a.waitConnected(to: [b])
        try FileManager.default.createDirectory(atPath: a.folder + "/docs", withIntermediateDirectories: true)
        try write(a, "docs/one.txt", "one\n")
        try write(a, "two.txt", "two\n")
        try eventually("A's files on B") { read(b, "docs/one.txt") == "one\n" && read(b, "two.txt") == "two\n" }
        try move(a, "two.txt", to: "docs/two.txt")
        try write(a, "docs/one.txt", "one, edited\n")
        try eventually("A's changes on B") { read(b, "docs/two.txt") == "two\n" && read(b, "docs/one.txt") == "one, edited\n" }
        func kept(_ node: P2PNode) -> Int { (try? node.storage(["log"]))?["operations_kept"] as? Int ?? -1 }
        func versions(_ node: P2PNode, _ path: String) -> Int {
            ((try? node.storage(["history", path]))?["versions"] as? [[String: Any]])?.count ?? -1
        }
        // 4 moves (docs, one, two, the move) settle; the versions stay: 3, or 4 when A's scan
        // catches the non-atomic rewrite of one.txt between truncation and write.
        let oneVersions = versions(a, "docs/one.txt")
        for node in [a, b] {
            try eventually("moves settled on \(node.id)") { kept(node) == oneVersions + versions(node, "docs/two.txt") && oneVersions >= 2 }
        }
        // C joins: every node now lists every other.
        for node in [a, b] { try node.stop() }
        try P2PNode.mesh(nodes)
        for node in nodes { try node.start() }
        for node in [a, b] { try eventually("the tree on \(node.id)") { files(node) == ["docs", "docs/one.txt", "docs/two.txt"] } }
        try eventually("the tree on C") { files(c) == ["docs", "docs/one.txt", "docs/two.txt"] && read(c, "docs/one.txt") == "one, edited\n" }
        #expect(read(c, "docs/two.txt") == "two\n")
        #expect(versions(c, "docs/one.txt") == oneVersions, "C holds the whole history of docs/one.txt")
        // And it syncs on: a change on C reaches the others.
        try move(c, "docs/two.txt", to: "two.txt")
        for node in [a, b] { try eventually("C's move on \(node.id)") { read(node, "two.txt") == "two\n" } }
    }

    @Test("an empty file reaches every node on the first fetch")
    func emptyFile() throws {
        defer { removeAll() }
        try startAll()
        try seed(["empty.txt": "", "one.txt": "one\n"])
        // posix_fallocate refuses a length of 0: the first fetch of an empty file used to fail.
        for node in nodes { #expect(!node.log.contains("cannot make room"), "\(node.log.suffix(2000))") }
    }

    @Test("a version-store copy that no longer holds its version is not restored from: the bytes come from a peer")
    func tamperedVersionStore() throws {
        defer { removeAll() }
        try startAll()
        let (a, b, c) = (nodes[0], nodes[1], nodes[2])
        try seed(["f.txt": "v1\n"])
        try write(a, "f.txt", "v2\n")
        for node in [b, c] { try eventually("v2 on \(node.id)") { read(node, "f.txt") == "v2\n" } }
        // B kept v1 in its version store when v2 replaced it; something changes that copy.
        let store = b.folder + "/.harp-versions/"
        let kept = try FileManager.default.contentsOfDirectory(atPath: store).filter { (try? String(contentsOfFile: store + $0, encoding: .utf8)) == "v1\n" }
        #expect(kept.count == 1, "\(kept)")
        for name in kept { try "v1 altered\n".write(toFile: store + name, atomically: false, encoding: .utf8) }
        _ = try b.storage(["restore", "f.txt", "--version", "1"])
        for node in nodes { try eventually("v1 restored on \(node.id)") { read(node, "f.txt") == "v1\n" } }
    }

    @Test("moves every node holds are dropped from the log (settled); a restarted node starts from the settled tree and syncs on")
    func settling() throws {
        defer { removeAll() }
        try startAll()
        let (a, b, c) = (nodes[0], nodes[1], nodes[2])
        let count = 20
        try FileManager.default.createDirectory(atPath: a.folder + "/s", withIntermediateDirectories: true)
        for number in 0..<count { try "\(number)\n".write(toFile: a.folder + "/s/\(number)", atomically: false, encoding: .utf8) }
        for node in [b, c] { try eventually("s/* on \(node.id)") { files(node).count == count + 1 } }
        for number in 0..<count { try FileManager.default.moveItem(atPath: a.folder + "/s/\(number)", toPath: a.folder + "/s/r\(number)") }
        let renamed = ["s"] + (0..<count).map { "s/r\($0)" }.sorted()
        for node in [b, c] { try eventually("renames on \(node.id)") { files(node) == renamed } }
        // 1 + 20 + 20 moves and 20 versions were made; once every node has reported holding
        // them, only the versions (the files' histories) are kept.
        func kept(_ node: P2PNode) -> Int { (try? node.storage(["log"]))?["operations_kept"] as? Int ?? -1 }
        for node in nodes { try eventually("moves settled on \(node.id) (\(kept(node)) kept)") { kept(node) == count } }
        try b.stop()
        try b.start()
        try b.waitConnected(to: [a, c])
        #expect(kept(b) == count, "a restarted node keeps what it kept")
        let listing = try b.storage(["ls", "s"])["entries"] as? [[String: Any]] ?? []
        #expect(listing.map { "s/" + ($0["name"] as? String ?? "") } == Array(renamed.dropFirst()))
        try FileManager.default.moveItem(atPath: b.folder + "/s/r0", toPath: b.folder + "/zero")
        for node in [a, c] { try eventually("B's move after restart on \(node.id)") { read(node, "zero") == "0\n" && read(node, "s/r0") == nil } }
        #expect(files(b) == files(a) && files(a) == files(c))
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
        func arrived() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: b.folder + "/burst")) ?? []) }
        _ = waitUntil(timeout: 60, interval: 0.02) { arrived().count >= count / 3 }
        try b.kill()
        try b.start()
        _ = waitUntil(timeout: 60) { arrived().filter { !$0.hasPrefix(".") }.count == count }
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
        _ = waitUntil { !arrived().contains { $0.hasPrefix(".") } }
        #expect(try FileManager.default.contentsOfDirectory(atPath: b.folder + "/burst").allSatisfy { !$0.hasPrefix(".") })
    }

    @Test("a new version whose fetch fails (its only holder killed mid-download) leaves the old file in place and deletes nothing")
    func failedFetchKeepsTheFile() throws {
        // 12 MiB take B 8 s after the first 4 MiB (the bucket's burst is one largest chunk).
        let (a, b) = try FolderSafetyTests.pair(downloadRate: 1 << 20)
        defer { for node in [a, b] { node.remove() } }
        try "old\n".write(toFile: a.folder + "/big.bin", atomically: false, encoding: .utf8)
        try eventually("the old big.bin on B") { (try? String(contentsOfFile: b.folder + "/big.bin", encoding: .utf8)) == "old\n" }
        let big = Data((0..<(12 << 20)).map { _ in UInt8.random(in: 0...255) })
        try big.write(to: URL(fileURLWithPath: a.folder + "/big.bin"))
        // Fetched files fill in the staging directory, under their content root (a name that
        // never overflows NAME_MAX), and are renamed into place when complete.
        func partials() -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: b.folder + "/.harp-staging")) ?? []).filter { $0.hasSuffix(".harp-partial") }
        }
        _ = waitUntil { !partials().isEmpty }
        try a.kill()
        // B gives the download up (10 s without a chunk) and tries again on later passes.
        do {
            try b.process!.waitForOutput("cannot fetch big.bin", timeout: 30)
        } catch {
            throw TestFailure("\(error)\nB's log: \(b.log.suffix(3000))")
        }
        usleep(1_500_000)
        #expect((try? String(contentsOfFile: b.folder + "/big.bin", encoding: .utf8)) == "old\n")
        #expect(!b.log.contains("deleted big.bin"), "\(b.log.suffix(1500))")
        #expect((try b.storage(["history", "big.bin"])["versions"] as? [[String: Any]])?.count == 2)
        try a.start()
        _ = waitUntil(timeout: 60, interval: 0.2) { (try? Data(contentsOf: URL(fileURLWithPath: b.folder + "/big.bin"))) == big }
        #expect((try? Data(contentsOf: URL(fileURLWithPath: b.folder + "/big.bin"))) == big)
        // The old bytes are in the version store, and only there.
        let store = b.folder + "/.harp-versions/"
        let stored = (try? FileManager.default.contentsOfDirectory(atPath: store)) ?? []
        #expect(stored.contains { (try? String(contentsOfFile: store + $0, encoding: .utf8)) == "old\n" }, "\(stored)")
    }
}
