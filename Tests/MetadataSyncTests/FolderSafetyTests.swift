import Foundation
import Glibc
import HarpTestSupport
@testable import MetadataSync
import Testing

/// What a node does to its own folder and disk when what it receives meets what is there:
/// a user's symbolic link is never written through nor taken for a delete, a delete whose
/// bytes cannot be kept leaves the file, permissions travel, long names sync, a full disk
/// stops fetches without filling it, and the state directory is the node's alone.
@Suite("p2p storage: the receiving folder and disk", .serialized)
struct FolderSafetyTests {
    /// Two connected nodes; `crdt` adds lines to their `[crdt]` section.
    static func pair(downloadRate: Int = 0, rescanInterval: String = "1s", stableAfter: String = "200ms", crdt: String = "") throws -> (a: P2PNode, b: P2PNode) {
        let a = try P2PNode(), b = try P2PNode()
        for node in [a, b] {
            node.plugins = ["p2p", "crdt"]
            node.extraConfig = "[crdt]\nrescan_interval = \"\(rescanInterval)\"\nstable_after = \"\(stableAfter)\"\n" + crdt
        }
        try a.configure(peers: [b])
        try b.configure(peers: [a], downloadRate: downloadRate)
        for node in [a, b] { try node.start() }
        try b.waitConnected(to: [a])
        return (a, b)
    }

    static func waitFor(_ what: String, timeout: Double = 20, _ condition: () -> Bool) throws {
        try eventually(what, timeout: timeout, interval: 0.1, condition)
    }

    @Test("a symbolic link in the receiving folder is never written through, and never turned into a delete")
    func symbolicLinks() throws {
        let (a, b) = try Self.pair()
        let elsewhere = NSTemporaryDirectory() + "harp-elsewhere-\(UUID().uuidString)"
        defer { for node in [a, b] { node.remove() }; try? FileManager.default.removeItem(atPath: elsewhere) }
        try FileManager.default.createDirectory(atPath: elsewhere, withIntermediateDirectories: false)
        // A synced directory, then B's user swaps it for a link to a directory outside.
        try FileManager.default.createDirectory(atPath: a.folder + "/docs", withIntermediateDirectories: false)
        try "kept\n".write(toFile: a.folder + "/docs/kept.txt", atomically: false, encoding: .utf8)
        try Self.waitFor("docs/kept.txt on B") { FileManager.default.fileExists(atPath: b.folder + "/docs/kept.txt") }
        try FileManager.default.removeItem(atPath: b.folder + "/docs")
        try FileManager.default.createSymbolicLink(atPath: b.folder + "/docs", withDestinationPath: elsewhere)
        // And a link where A is about to create a directory.
        try FileManager.default.createSymbolicLink(atPath: b.folder + "/photos", withDestinationPath: elsewhere)
        try FileManager.default.createDirectory(atPath: a.folder + "/photos", withIntermediateDirectories: false)
        try "remote\n".write(toFile: a.folder + "/photos/x.txt", atomically: false, encoding: .utf8)
        try "more\n".write(toFile: a.folder + "/docs/new.txt", atomically: false, encoding: .utf8)
        try b.process!.waitForOutput("the folder cannot take photos")
        try b.process!.waitForOutput("docs is a symbolic link")
        usleep(3_000_000)  // a few passes on both nodes
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: elsewhere)) ?? []).isEmpty, "nothing written through the links")
        #expect(FileManager.default.fileExists(atPath: a.folder + "/docs/kept.txt"), "B's link is not a delete on A")
        #expect(!b.log.contains("deleted docs"))
        #expect(FileManager.default.fileExists(atPath: a.folder + "/photos/x.txt"))
    }

    @Test("a delete whose bytes cannot be kept in the version store leaves the file where it is")
    func deleteKeepsBytes() throws {
        let (a, b) = try Self.pair()
        defer { for node in [a, b] { node.remove() } }
        try "precious\n".write(toFile: a.folder + "/x.txt", atomically: false, encoding: .utf8)
        try Self.waitFor("x.txt on B") { FileManager.default.fileExists(atPath: b.folder + "/x.txt") }
        // B's version store cannot be made: a file holds its name (B's own user put it there).
        try "in the way\n".write(toFile: b.folder + "/.harp-versions", atomically: false, encoding: .utf8)
        try FileManager.default.removeItem(atPath: a.folder + "/x.txt")
        try b.process!.waitForOutput("cannot keep the bytes of x.txt")
        #expect((try? String(contentsOfFile: b.folder + "/x.txt", encoding: .utf8)) == "precious\n")
    }

    @Test("a deleted directory and its files are listed (ls --deleted), keep their history, and restore brings a file back with its directory, alone")
    func deletedPaths() throws {
        let (a, b) = try Self.pair()
        defer { for node in [a, b] { node.remove() } }
        try FileManager.default.createDirectory(atPath: a.folder + "/docs", withIntermediateDirectories: false)
        try "draft\n".write(toFile: a.folder + "/docs/a.txt", atomically: false, encoding: .utf8)
        try "other\n".write(toFile: a.folder + "/docs/b.txt", atomically: false, encoding: .utf8)
        try Self.waitFor("docs/a.txt on B") { FileManager.default.fileExists(atPath: b.folder + "/docs/b.txt") }
        try FileManager.default.removeItem(atPath: a.folder + "/docs")
        try Self.waitFor("docs gone from B") { !FileManager.default.fileExists(atPath: b.folder + "/docs") }
        let top = try b.storage(["ls", "--deleted"])["entries"] as? [[String: Any]] ?? []
        #expect(top.map { $0["name"] as? String } == ["docs"])
        let inside = try b.storage(["ls", "--deleted", "docs"])["entries"] as? [[String: Any]] ?? []
        #expect(inside.map { $0["name"] as? String } == ["a.txt", "b.txt"])
        let history = try b.storage(["history", "docs/a.txt"])
        #expect(history["deleted"] as? Bool == true && (history["versions"] as? [[String: Any]])?.count == 1)
        _ = try b.storage(["restore", "docs/a.txt", "--version", "1"])
        for node in [b, a] {
            try Self.waitFor("docs/a.txt back on \(node.id)") {
                (try? String(contentsOfFile: node.folder + "/docs/a.txt", encoding: .utf8)) == "draft\n"
            }
        }
        #expect((try a.storage(["ls", "--deleted"])["entries"] as? [[String: Any]] ?? []).isEmpty, "docs is back")
        let still = try a.storage(["ls", "--deleted", "docs"])["entries"] as? [[String: Any]] ?? []
        #expect(still.map { $0["name"] as? String } == ["b.txt"], "what else was deleted with docs stays deleted")
        #expect(!FileManager.default.fileExists(atPath: a.folder + "/docs/b.txt"))
    }

    @Test("ls, history and log read a stopped node's metadata log (read only); status still needs the node")
    func stoppedNode() throws {
        let node = try P2PNode()
        defer { node.remove() }
        node.plugins = ["p2p", "crdt"]
        node.extraConfig = "[crdt]\nrescan_interval = \"1s\"\nstable_after = \"200ms\""
        try node.configure(peers: [])
        try node.start()
        try "one\n".write(toFile: node.folder + "/notes.txt", atomically: false, encoding: .utf8)
        try node.process!.waitForOutput("local changes: created notes.txt")
        try node.stop()
        let names = (try node.storage(["ls"])["entries"] as? [[String: Any]] ?? []).map { $0["name"] as? String }
        #expect(names == ["notes.txt"])
        #expect((try node.storage(["history", "notes.txt"])["versions"] as? [[String: Any]])?.count == 1)
        #expect((try node.storage(["log"])["operations"] as? [[String: Any]])?.count == 2, "the create and the version")
        let status = try HarpProcess.run(["storage", "status", "--config", node.configPath])
        #expect(status.status != 0 && status.stderr.contains("the node is not running"), "\(status.stderr)")
    }

    @Test("an ignored directory is invisible to sync on the ignoring node: not created there, never a delete elsewhere")
    func ignoreRules() throws {
        let (a, b) = try Self.pair()
        defer { for node in [a, b] { node.remove() } }
        // B ignores build/ and cache/ (cache/ after it synced once).
        try FileManager.default.createDirectory(atPath: a.folder + "/cache", withIntermediateDirectories: false)
        try "cached\n".write(toFile: a.folder + "/cache/c.txt", atomically: false, encoding: .utf8)
        try Self.waitFor("cache/c.txt on B") { FileManager.default.fileExists(atPath: b.folder + "/cache/c.txt") }
        try "build/\ncache/\n".write(toFile: b.folder + "/.harpignore", atomically: false, encoding: .utf8)
        try FileManager.default.removeItem(atPath: b.folder + "/cache")  // B's user clears its ignored cache
        try FileManager.default.createDirectory(atPath: a.folder + "/build", withIntermediateDirectories: false)
        try "work\n".write(toFile: a.folder + "/build/work.txt", atomically: false, encoding: .utf8)
        try "more\n".write(toFile: a.folder + "/cache/more.txt", atomically: false, encoding: .utf8)
        try "plain\n".write(toFile: a.folder + "/plain.txt", atomically: false, encoding: .utf8)
        try Self.waitFor("plain.txt on B") { FileManager.default.fileExists(atPath: b.folder + "/plain.txt") }
        usleep(3_000_000)  // a few passes on both
        #expect(!FileManager.default.fileExists(atPath: b.folder + "/build"), "not created on the ignoring node")
        #expect(!FileManager.default.fileExists(atPath: b.folder + "/cache"))
        #expect(FileManager.default.fileExists(atPath: a.folder + "/build/work.txt"))
        #expect(FileManager.default.fileExists(atPath: a.folder + "/cache/c.txt"), "B's ignored delete is not a delete on A")
        #expect(FileManager.default.fileExists(atPath: a.folder + "/cache/more.txt"))
        #expect(!b.log.contains("deleted cache"))
    }

    @Test("an empty file is made, never fetched; a file's modification time travels (a 2020 file still says 2020)")
    func emptyFilesAndModificationTimes() throws {
        let (a, b) = try Self.pair()
        defer { for node in [a, b] { node.remove() } }
        _ = FileManager.default.createFile(atPath: a.folder + "/empty.txt", contents: Data())
        try "old\n".write(toFile: a.folder + "/old.txt", atomically: false, encoding: .utf8)
        let y2020 = Date(timeIntervalSince1970: 1_580_000_000)
        try FileManager.default.setAttributes([.modificationDate: y2020], ofItemAtPath: a.folder + "/old.txt")
        try Self.waitFor("both on B") {
            ["empty.txt", "old.txt"].allSatisfy { FileManager.default.fileExists(atPath: b.folder + "/" + $0) }
        }
        let modified = try FileManager.default.attributesOfItem(atPath: b.folder + "/old.txt")[.modificationDate] as? Date
        #expect(modified.map { abs($0.timeIntervalSince(y2020)) < 1 } == true, "\(String(describing: modified))")
        #expect(!b.log.contains("fetching \(MetadataNode.emptyRoot)"), "no fetch for empty content")
    }

    @Test("a command that fails says so in one line with exit status 1 (no usage); with --json, as {\"error\": …}")
    func commandFailures() throws {
        let node = try P2PNode()
        defer { node.remove() }
        node.plugins = ["p2p", "crdt"]
        try node.configure(peers: [])
        try node.start()
        let plain = try HarpProcess.run(["storage", "history", "missing.txt", "--config", node.configPath])
        #expect(plain.status == 1)
        #expect(plain.stderr == "harp: missing.txt is not a file in the folder, nor a deleted one\n", "\(plain.stderr)")
        let json = try HarpProcess.run(["storage", "history", "missing.txt", "--config", node.configPath, "--json"])
        #expect(json.status == 1)
        #expect(json.stdout.hasPrefix("{\"error\":\"missing.txt is not a file"), "\(json.stdout)")
        #expect(json.stderr.isEmpty)
    }

    @Test("a peer's host name is looked up at each attempt: one that does not resolve at start is no error, one that does connects")
    func peerNames() throws {
        let a = try P2PNode(), b = try P2PNode()
        defer { for node in [a, b] { node.remove() } }
        // A names B as localhost, and a third peer whose name will never resolve.
        try """
            [harp]
            plugins = ["p2p"]
            [storage]
            dir = "\(a.dir)"
            folder = "\(a.folder)"
            listen = "127.0.0.1:\(a.port)"
            peers = ["\(b.id)@localhost:\(b.port)", "\(try P2PNode().id)@no-such-host.invalid:9"]
            """.write(toFile: a.configPath, atomically: true, encoding: .utf8)
        try b.configure(peers: [a])
        try a.start()
        try b.start()
        try a.waitConnected(to: [b])
        #expect(a.process!.process.isRunning)
    }

    @Test("permission bits travel (0600, 0755; a chmod alone too); a local chmod survives a remote edit; names of 250 bytes sync")
    func modesAndLongNames() throws {
        let (a, b) = try Self.pair()
        defer { for node in [a, b] { node.remove() } }
        func mode(_ path: String) -> Int { ((try? FileManager.default.attributesOfItem(atPath: path)[.posixPermissions]) as? Int) ?? -1 }
        let long = String(repeating: "l", count: 246) + ".txt"
        try "secret\n".write(toFile: a.folder + "/secret.txt", atomically: false, encoding: .utf8)
        chmod(a.folder + "/secret.txt", 0o600)
        try "#!/bin/sh\n".write(toFile: a.folder + "/run.sh", atomically: false, encoding: .utf8)
        chmod(a.folder + "/run.sh", 0o755)
        try "long\n".write(toFile: a.folder + "/" + long, atomically: false, encoding: .utf8)
        try Self.waitFor("three files on B") {
            ["secret.txt", "run.sh", long].allSatisfy { FileManager.default.fileExists(atPath: b.folder + "/" + $0) }
        }
        #expect(mode(b.folder + "/secret.txt") == 0o600)
        #expect(mode(b.folder + "/run.sh") == 0o755)
        chmod(a.folder + "/secret.txt", 0o640)
        try Self.waitFor("the chmod on B") { mode(b.folder + "/secret.txt") == 0o640 }
        // B's user makes run.sh private; A edits it: B keeps its own mode.
        chmod(b.folder + "/run.sh", 0o700)
        usleep(1_500_000)  // B records its chmod (and sends it)
        try "#!/bin/sh\necho edited\n".write(toFile: a.folder + "/run.sh", atomically: false, encoding: .utf8)
        try Self.waitFor("the edit on B") { (try? String(contentsOfFile: b.folder + "/run.sh", encoding: .utf8))?.contains("edited") == true }
        #expect(mode(b.folder + "/run.sh") == 0o700)
    }

    @Test("the state directory is 0700 and its files 0600, whatever they were")
    func stateDirectoryModes() throws {
        let node = try P2PNode()
        defer { node.remove() }
        chmod(node.dir, 0o755)
        node.plugins = ["p2p", "crdt"]
        try node.configure(peers: [])
        try node.start()
        func mode(_ path: String) -> Int { ((try? FileManager.default.attributesOfItem(atPath: path)[.posixPermissions]) as? Int) ?? -1 }
        #expect(mode(node.dir) == 0o700)
        for file in ["node.key", "index.sqlite", "metadata.sqlite"] { #expect(mode(node.dir + "/" + file) == 0o600, "\(file)") }
    }

    static var canMount: Bool { getuid() == 0 && FileManager.default.fileExists(atPath: "/proc/filesystems") }

    @Test("a full file system: the fetch is refused before it starts (one line), nothing fills the disk, and smaller files still arrive",
          .enabled(if: canMount, "needs root to mount a small tmpfs"))
    func fullDisk() throws {
        let a = try P2PNode(), b = try P2PNode()
        defer { for node in [a, b] { node.remove() } }
        // B's folder on an 8 MiB tmpfs, with the default min_free (1%).
        guard try shell("mount -t tmpfs -o size=8m tmpfs \(b.folder)").status == 0 else { throw TestFailure("mount failed") }
        defer { _ = try? shell("umount -l \(b.folder)") }
        for node in [a, b] {
            node.plugins = ["p2p", "crdt"]
            node.extraConfig = "[crdt]\nrescan_interval = \"1s\"\nstable_after = \"200ms\""
        }
        try a.configure(peers: [b])
        try b.configure(peers: [a])
        for node in [a, b] { try node.start() }
        try b.waitConnected(to: [a])
        try Data((0..<(20 << 20)).map { _ in UInt8.random(in: 0...255) }).write(to: URL(fileURLWithPath: a.folder + "/big.bin"))
        try b.process!.waitForOutput("no room", timeout: 30)
        try "small\n".write(toFile: a.folder + "/small.txt", atomically: false, encoding: .utf8)
        try Self.waitFor("small.txt on B") { FileManager.default.fileExists(atPath: b.folder + "/small.txt") }
        usleep(3_000_000)
        let free = try shell("df --output=avail -B1 \(b.folder) | tail -1").output
        #expect((Int(free) ?? 0) > 4 << 20, "B's disk is not filled: \(free) bytes free")
        #expect(b.occurrences(of: "no room") <= 2, "one line a minute, not one per pass")
        #expect(b.process!.process.isRunning)
    }
}

extension P2PNode {
    func occurrences(of text: String) -> Int { process?.occurrences(of: text) ?? 0 }
}
