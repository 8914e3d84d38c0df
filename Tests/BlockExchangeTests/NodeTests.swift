@testable import BlockExchange
import Foundation
import Glibc
import HarpKernel
import HarpTestSupport
import Testing

/// Node identity, the folder index, and the `harp storage` commands through the binary.
@Suite("p2p node")
struct NodeTests {
    static func temporaryDirectory() -> String { NSTemporaryDirectory() + "harp-node-\(UUID().uuidString)" }

    @Test("node IDs: base32 in groups of four, parsed back whatever the case and dashes; anything else refused")
    func nodeIDs() {
        let id = NodeID(bytes: (0..<32).map { UInt8($0 * 7 & 0xFF) })
        let text = id.description
        #expect(text.count == 52 + 12 && text.split(separator: "-").allSatisfy { $0.count == 4 })
        #expect(NodeID(parsing: text) == id)
        #expect(NodeID(parsing: text.lowercased().replacingOccurrences(of: "-", with: "")) == id)
        #expect(NodeID(parsing: String(text.dropLast())) == nil)
        #expect(NodeID(parsing: text.replacingOccurrences(of: "A", with: "1")) == nil || !text.contains("A"))
        #expect(NodeID(parsing: "not an id") == nil)
    }

    @Test("harp storage init makes an Ed25519 identity (key 0600), refuses to replace it; the ID is SHA-256 of the public key")
    func initAndID() throws {
        let dir = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let made = try HarpProcess.run(["storage", "init", "--dir", dir])
        #expect(made.status == 0, "\(made.stderr)")
        let id = made.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(NodeID(parsing: id) != nil, "\(id)")
        var info = stat()
        #expect(stat(dir + "/node.key", &info) == 0 && info.st_mode & 0o777 == 0o600)
        #expect(try shell("openssl pkey -in \(dir)/node.key -noout -text | head -1").output.contains("ED25519"))
        // Independently: SHA-256 of the certificate's SubjectPublicKeyInfo DER.
        let spki = try shell("openssl x509 -in \(dir)/node.crt -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum | cut -c1-64").output
        #expect(SHA256.hexString(NodeID(parsing: id)!.bytes) == spki)
        let again = try HarpProcess.run(["storage", "init", "--dir", dir])
        #expect(again.status != 0 && again.stderr.contains("already has a node identity"), "\(again.stderr)")
        let shown = try HarpProcess.run(["storage", "id", "--dir", dir])
        #expect(shown.status == 0 && shown.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == id)
        let missing = try HarpProcess.run(["storage", "id", "--dir", dir + "/nothing"])
        #expect(missing.status != 0 && missing.stderr.contains("harp storage init --dir"), "\(missing.stderr)")
    }

    @Test("the folder index: files chunked at start; a changed file is indexed again before a chunk is served, a removed one never served")
    func folderIndex() throws {
        let dir = Self.temporaryDirectory(), folder = dir + "/folder"
        try FileManager.default.createDirectory(atPath: folder + "/sub", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bytes = ChunkingTests.stream(3 << 20)
        try Data(bytes).write(to: URL(fileURLWithPath: folder + "/sub/a.bin"))
        try Data("hello".utf8).write(to: URL(fileURLWithPath: folder + "/b.txt"))
        try Data("hidden".utf8).write(to: URL(fileURLWithPath: folder + "/.hidden"))
        let database = try Database(path: dir + "/index.sqlite", migrations: [FolderIndex.migrations])
        let index = FolderIndex(folder: folder, database: database)
        #expect(try index.indexAll() == 2)
        let manifest = try FileChunker.chunk(path: folder + "/sub/a.bin").manifest
        #expect(try index.holds(manifest.root) && index.manifest(of: manifest.root) == manifest)
        #expect(try !index.holds(ChunkID(bytes: [UInt8](repeating: 7, count: 32))))
        let first = manifest.entries[0]
        let location = try index.locate(first.id)
        #expect(location?.path == folder + "/sub/a.bin" && location?.offset == 0 && location?.length == first.length)
        // The file changes: its old first chunk is gone, and the index notices before serving.
        try Data([0x42] + bytes.dropFirst()).write(to: URL(fileURLWithPath: folder + "/sub/a.bin"))
        #expect(try index.locate(first.id) == nil)
        let changed = try FileChunker.chunk(path: folder + "/sub/a.bin").manifest
        #expect(try index.locate(changed.entries[0].id)?.offset == 0)
        try FileManager.default.removeItem(atPath: folder + "/sub/a.bin")
        #expect(try index.locate(changed.entries[0].id) == nil)
        #expect(try index.counts().files == 1)
    }

    @Test("a renamed directory: the index follows it (moved) and serves its files from the new path without reading them again")
    func folderIndexFollowsRenames() throws {
        let dir = Self.temporaryDirectory(), folder = dir + "/folder"
        try FileManager.default.createDirectory(atPath: folder + "/proj/deep", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(ChunkingTests.stream(1 << 20)).write(to: URL(fileURLWithPath: folder + "/proj/deep/a.bin"))
        try Data("b".utf8).write(to: URL(fileURLWithPath: folder + "/proj/b.txt"))
        try Data("sibling".utf8).write(to: URL(fileURLWithPath: folder + "/proj0.txt"))  // sorts right after "proj/"
        let database = try Database(path: dir + "/index.sqlite", migrations: [FolderIndex.migrations])
        let index = FolderIndex(folder: folder, database: database)
        #expect(try index.indexAll() == 3)
        let chunk = try FileChunker.chunk(path: folder + "/proj/deep/a.bin").manifest.entries[0].id
        try FileManager.default.moveItem(atPath: folder + "/proj", toPath: folder + "/project")
        try index.moved(from: "proj", to: "project")
        #expect(try index.locate(chunk)?.path == folder + "/project/deep/a.bin")
        let paths = try database.readNow { try $0.query("SELECT path FROM files ORDER BY path", []) { $0.text(0) } }
        #expect(paths == ["proj0.txt", "project/b.txt", "project/deep/a.bin"])
    }

    @Test("indexing at start meets a rename the metadata sync made after the walk passed: the file is still served from its new path")
    func indexAllKeepsARenameAfterTheWalk() throws {
        let dir = Self.temporaryDirectory(), folder = dir + "/folder"
        try FileManager.default.createDirectory(atPath: folder + "/deep", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data("only copy\n".utf8).write(to: URL(fileURLWithPath: folder + "/old.txt"))
        try Data("removed\n".utf8).write(to: URL(fileURLWithPath: folder + "/gone.txt"))
        let database = try Database(path: dir + "/index.sqlite", migrations: [FolderIndex.migrations])
        let index = FolderIndex(folder: folder, database: database)
        #expect(try index.indexAll() == 2)
        let chunk = try FileChunker.chunk(path: folder + "/old.txt").manifest.entries[0].id
        // The walk passes first (it saw old.txt), then the file is renamed and the index told,
        // and gone.txt is removed: only gone.txt's row may go.
        let walked = FolderIndex.files(under: folder)
        try FileManager.default.moveItem(atPath: folder + "/old.txt", toPath: folder + "/deep/new.txt")
        try index.moved(from: "old.txt", to: "deep/new.txt")
        try FileManager.default.removeItem(atPath: folder + "/gone.txt")
        #expect(try index.indexAll(walked: walked) == 0)
        #expect(try index.locate(chunk)?.path == folder + "/deep/new.txt")
        let paths = try database.readNow { try $0.query("SELECT path FROM files ORDER BY path", []) { $0.text(0) } }
        #expect(paths == ["deep/new.txt"])
    }

    @Test("many files indexed at once: each gets its rows (a vanished one is left out) and is then current")
    func indexMany() throws {
        let dir = Self.temporaryDirectory(), folder = dir + "/folder"
        try FileManager.default.createDirectory(atPath: folder + "/d", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for number in 0..<50 { try Data("file \(number)\n".utf8).write(to: URL(fileURLWithPath: folder + "/d/\(number).txt")) }
        let database = try Database(path: dir + "/index.sqlite", migrations: [FolderIndex.migrations])
        let index = FolderIndex(folder: folder, database: database)
        index.index(["d/missing.txt"] + (0..<50).map { "d/\($0).txt" })
        #expect(try index.counts().files == 50)
        let root = try FileChunker.chunk(path: folder + "/d/7.txt").manifest.root
        #expect(try index.holds(root) && index.manifest(of: root)?.root == root)
        let current = try database.readNow { try $0.query("SELECT COUNT(*) FROM files WHERE path = 'd/7.txt' AND root = ?", [.blob(root.bytes)]) { $0.integer(0) } }
        #expect(current == [1])
    }

    @Test("harp serve with [storage]: the node's ID in the banner and the folder indexed at start")
    func serveIndexes() throws {
        let dir = Self.temporaryDirectory(), folder = dir + "/folder"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(ChunkingTests.stream(2 << 20)).write(to: URL(fileURLWithPath: folder + "/x.bin"))
        let id = try HarpProcess.run(["storage", "init", "--dir", dir]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let harp = try HarpProcess.serve("""
            [harp]
            plugins = ["p2p"]
            log_level = "info"
            [storage]
            dir = "\(dir)"
            folder = "\(folder)"
            listen = "127.0.0.1:\(freePort())"
            """)
        #expect(harp.stdout.contains("p2p: node \(id)"))
        try harp.waitForOutput("folder indexed")
        #expect(harp.stderr.contains("files=1"), "\(harp.stderr)")
        #expect(try harp.stop() == 0)
        let unknown = try HarpProcess.run(["serve"], config: "[storage]\ndir = \"\(dir)/none\"\nfolder = \"\(folder)\"")
        #expect(unknown.status != 0 && unknown.stderr.contains("storage.dir") && unknown.stderr.contains("harp storage init"), "\(unknown.stderr)")
    }
}
