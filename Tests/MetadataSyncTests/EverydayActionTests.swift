import Foundation
import HarpTestSupport
import Testing

/// What users do every day, on real nodes: move big directories while the node scans, edit and
/// delete while a node is stopped, edit inside a directory another node deletes. Nothing is
/// flattened, lost or silently overruled.
@Suite("p2p storage: everyday actions", .serialized)
struct EverydayActionTests {
    static func files(_ node: P2PNode, under directory: String = "") -> [String] {
        let top = node.folder + (directory.isEmpty ? "" : "/" + directory)
        return (FileManager.default.enumerator(atPath: top)?.allObjects as? [String] ?? []).filter { !$0.hasPrefix(".") }.sorted()
    }

    @Test("a directory of 500 files renamed 300 times while the node scans ends as moves on every node: nothing flattened, created or deleted")
    func directoryMoves() throws {
        let (a, b) = try FolderSafetyTests.pair()
        defer { for node in [a, b] { node.remove() } }
        let count = 500
        let names = (0..<count).map { String(format: "f%04d", $0) }
        try FileManager.default.createDirectory(atPath: a.folder + "/many", withIntermediateDirectories: false)
        for name in names { try "\(name)\n".write(toFile: a.folder + "/many/" + name, atomically: false, encoding: .utf8) }
        try FolderSafetyTests.waitFor("many/ on B", timeout: 120) { Self.files(b, under: "many").count == count }
        // Renames at random moments, each a few milliseconds apart, with writes that start passes:
        // many of them land in the middle of a walk.
        var generator = SystemRandomNumberGenerator()
        var location = "many"
        for round in 0..<300 {
            if round % 10 == 0 {
                try FileManager.default.createDirectory(atPath: a.folder + "/archive\(round / 10)", withIntermediateDirectories: false)
                try "\(round)\n".write(toFile: a.folder + "/trigger", atomically: false, encoding: .utf8)
            }
            let next = "archive\(Int.random(in: 0...(round / 10), using: &generator))/moved\(round % 3)"
            guard next != location else { continue }
            try FileManager.default.moveItem(atPath: a.folder + "/" + location, toPath: a.folder + "/" + next)
            location = next
            usleep(UInt32.random(in: 0...8_000, using: &generator))
        }
        let expected = (["trigger", location] + (0..<30).map { "archive\($0)" } + names.map { location + "/" + $0 }).sorted()
        for node in [a, b] {
            try FolderSafetyTests.waitFor("the 500 files under \(location) on \(node.id)", timeout: 30) { Self.files(node) == expected }
        }
        let local = a.log.split(separator: "\n").filter { $0.contains("local changes:") }
        #expect(!local.contains { $0.contains("created archive") && $0.contains("/moved") && $0.contains("/f0") || $0.contains("deleted") },
                "\(local.joined(separator: "\n").suffix(3000))")
        let deleted = try b.storage(["ls", "--deleted"])["entries"] as? [[String: Any]] ?? []
        #expect(deleted.isEmpty, "nothing was deleted: \(deleted)")
        let versions = try b.storage(["history", location + "/f0007"])["versions"] as? [[String: Any]] ?? []
        #expect(versions.count == 1, "the file's history is whole: \(versions)")
    }

    static func read(_ node: P2PNode, _ path: String) -> String? { try? String(contentsOfFile: node.folder + "/" + path, encoding: .utf8) }

    @Test("changes made while a node was stopped keep their time: an older edit and an older delete lose to newer edits elsewhere, a newer edit wins, and status lists each conflict")
    func offlineChangesKeepTheirTime() throws {
        let (a, b) = try FolderSafetyTests.pair()
        defer { for node in [a, b] { node.remove() } }
        for name in ["f.txt", "g.txt", "h.txt"] { try "v1\n".write(toFile: a.folder + "/" + name, atomically: false, encoding: .utf8) }
        try FolderSafetyTests.waitFor("the files on B") { ["f.txt", "g.txt", "h.txt"].allSatisfy { Self.read(b, $0) == "v1\n" } }
        try b.stop()
        // B, stopped: an edit of h (older than A's edit of h below).
        try "older, on B\n".write(toFile: b.folder + "/h.txt", atomically: false, encoding: .utf8)
        usleep(1_100_000)
        try a.stop()
        // A, stopped: an edit of f and a delete of g.
        try "older, on A\n".write(toFile: a.folder + "/f.txt", atomically: false, encoding: .utf8)
        try FileManager.default.removeItem(atPath: a.folder + "/g.txt")
        usleep(1_100_000)
        // B, later: edits of f and g; A's later edit of h.
        try "newer, on B\n".write(toFile: b.folder + "/f.txt", atomically: false, encoding: .utf8)
        try "newer, on B\n".write(toFile: b.folder + "/g.txt", atomically: false, encoding: .utf8)
        try "newer, on A\n".write(toFile: a.folder + "/h.txt", atomically: false, encoding: .utf8)
        usleep(1_100_000)  // both found only now, when the nodes start: "later" must not mean "noticed later"
        for node in [b, a] { try node.start() }
        try a.waitConnected(to: [b])
        for node in [a, b] {
            try FolderSafetyTests.waitFor("the newer sides on \(node.id)") {
                Self.read(node, "f.txt") == "newer, on B\n" && Self.read(node, "g.txt") == "newer, on B\n" && Self.read(node, "h.txt") == "newer, on A\n"
            }
        }
        for node in [a, b] {
            let versions = try node.storage(["history", "f.txt"])["versions"] as? [[String: Any]] ?? []
            #expect(versions.count == 3 && versions.last?["concurrent"] as? Bool == true, "A's older edit is in the history: \(versions)")
        }
        let conflicts = try a.storage(["status"])["conflicts"] as? [[String: Any]] ?? []
        let listed = Set(conflicts.map { "\($0["path"] as? String ?? "") \($0["kind"] as? String ?? "")" })
        #expect(listed == ["f.txt concurrent_edit", "g.txt delete_overruled", "h.txt concurrent_edit"], "\(conflicts)")
        let text = try HarpProcess.run(["storage", "status", "--config", a.configPath])
        #expect(text.stdout.contains("g.txt: deleted on \(a.id.prefix(9)), kept by a later change on \(b.id.prefix(9))"), "\(text.stdout)")
    }

    @Test("the version store keeps keep_versions per file within version_store_max, says so in status, and a version whose bytes are gone everywhere is not restored")
    func versionStoreRetention() throws {
        let (a, b) = try FolderSafetyTests.pair(crdt: "keep_versions = 2\nversion_store_max = \"1MiB\"")
        defer { for node in [a, b] { node.remove() } }
        // A deleted file of 3 MiB: past version_store_max on its own.
        try P2PNode.makeFile(a.folder + "/big.bin", size: 3 << 20)
        try FolderSafetyTests.waitFor("big.bin on B") { (try? FileManager.default.attributesOfItem(atPath: b.folder + "/big.bin")[.size] as? Int) == 3 << 20 }
        try FileManager.default.removeItem(atPath: a.folder + "/big.bin")
        func store() -> [String: Any] { ((try? b.storage(["status"]))?["version_store"] as? [String: Any]) ?? [:] }
        try FolderSafetyTests.waitFor("big.bin's bytes pruned on B") { store()["pruned_files"] as? Int == 1 && store()["files"] as? Int == 0 }
        for step in 1...5 {
            // Written over in place, never truncated: a scan that catches the file empty between
            // a truncate and the write records an empty version too.
            let fd = open(a.folder + "/f.txt", O_WRONLY | O_CREAT, 0o644)
            _ = Array("version \(step)\n".utf8).withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
            close(fd)
            try FolderSafetyTests.waitFor("version \(step) on B") { Self.read(b, "f.txt") == "version \(step)\n" }
        }
        func kept() -> Set<String> {
            Set(((try? FileManager.default.contentsOfDirectory(atPath: b.folder + "/.harp-versions")) ?? []).map {
                (try? String(contentsOfFile: b.folder + "/.harp-versions/" + $0, encoding: .utf8)) ?? "?"
            })
        }
        try FolderSafetyTests.waitFor("B's store pruned to f's two newest replaced versions") {
            kept() == ["version 3\n", "version 4\n"] && store()["files"] as? Int == 2
        }
        #expect(store()["pruned_files"] as? Int == 3 && (store()["pruned_bytes"] as? Int ?? 0) >= 3 << 20, "\(store())")
        let text = try HarpProcess.run(["storage", "status", "--config", b.configPath])
        #expect(text.stdout.contains("version store: 2 versions"), "\(text.stdout)")
        // Version 1's bytes are in no store (A wrote over them in place, B pruned them).
        let refused = try HarpProcess.run(["storage", "restore", "f.txt", "--version", "1", "--config", b.configPath])
        #expect(refused.status == 1 && refused.stderr.contains("version 1 of f.txt cannot come back"), "\(refused.stderr)")
        _ = try b.storage(["restore", "f.txt", "--version", "4"])
        for node in [a, b] { try FolderSafetyTests.waitFor("version 4 restored on \(node.id)") { Self.read(node, "f.txt") == "version 4\n" } }
        let content = try b.storage(["status"])["content"] as? [String: Any] ?? [:]
        #expect(content["pending_files"] as? Int == 0 && content["in_flight"] as? Int == 0, "nothing left to fetch: \(content)")
    }

    @Test("a mode change from a peer meets an edit not yet scanned: the edit is kept and becomes a version everywhere")
    func modeChangeMeetsUnscannedEdit() throws {
        // stable_after 3 s: B's edit waits that long before a scan versions it, and A's chmod
        // (published at once: same bytes, new mode) reaches B meanwhile.
        let (a, b) = try FolderSafetyTests.pair(stableAfter: "3s")
        defer { for node in [a, b] { node.remove() } }
        try "v1\n".write(toFile: a.folder + "/f.txt", atomically: false, encoding: .utf8)
        try FolderSafetyTests.waitFor("f.txt on B", timeout: 30) { Self.read(b, "f.txt") == "v1\n" }
        let fd = open(b.folder + "/f.txt", O_WRONLY | O_TRUNC)
        _ = Array("edited on B\n".utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        chmod(a.folder + "/f.txt", 0o600)
        try a.process!.waitForOutput("changed the mode of f.txt")
        try FolderSafetyTests.waitFor("A's mode version in B's history", timeout: 30) {
            ((try? b.storage(["history", "f.txt"]))?["versions"] as? [[String: Any]])?.count == 2
        }
        // B's edit is versioned once stable, after A's mode version (a node stamps a change
        // after the newest version it holds of that file), so it is the newest on both nodes.
        // Before the fix B took the mode and recorded its edited file under v1's root: no
        // later scan saw a change, and A never got the edit.
        try FolderSafetyTests.waitFor("B's edit on A", timeout: 30) { Self.read(a, "f.txt") == "edited on B\n" }
        #expect(Self.read(b, "f.txt") == "edited on B\n")
    }
}
