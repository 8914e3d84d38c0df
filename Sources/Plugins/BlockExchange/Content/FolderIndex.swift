import CShims
import Glibc
import HarpKernel

/// The SQLite index of the synced folder: which chunks each file holds and where. Checked
/// before it is trusted: a file whose size, mtime or inode changed since it was indexed is
/// indexed again, so a stale location is never served.
public final class FolderIndex: Sendable {
    public let folder: String
    let database: Database

    public static let migrations = Database.Migrations(plugin: "p2p", steps: [
        """
        CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
                            root BLOB NOT NULL);
        CREATE TABLE chunks (path TEXT NOT NULL REFERENCES files(path) ON DELETE CASCADE, offset INTEGER NOT NULL,
                             id BLOB NOT NULL, length INTEGER NOT NULL, PRIMARY KEY (path, offset));
        CREATE INDEX chunks_by_id ON chunks(id);
        """,
        "CREATE INDEX files_by_root ON files(root);\n" + TransferStore.migration,
    ])

    public init(folder: String, database: Database) {
        self.folder = folder
        self.database = database
    }

    /// What the file system says of a file now.
    struct Stamp: Equatable {
        let size: Int64
        let mtime: Int64
        let inode: Int64

        init?(path: String) {
            var info = stat()
            guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return nil }
            size = Int64(info.st_size)
            mtime = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
            inode = Int64(info.st_ino)
        }
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Indexes `relative` (a path inside the folder) unless its entry is current; returns its
    /// manifest root.
    @discardableResult
    public func index(_ relative: String) throws(Failure) -> ChunkID {
        try index(relative, attempts: 3)
    }

    private func index(_ relative: String, attempts: Int) throws(Failure) -> ChunkID {
        switch try chunkUnlessCurrent(relative, attempts: attempts) {
        case .current(let root):
            return root
        case .chunked(let stamp, let manifest):
            try wrapped { try database.readNow { connection in try connection.transactionNow { try Self.insert(relative, stamp, manifest, into: connection) } } }
            return manifest.root
        }
    }

    /// Indexes many files as `index` does each, their rows written in one transaction (a
    /// scan's new files: one commit per file was most of what indexing a small file cost).
    /// A file that vanished or kept changing is left out (`index` says why, later).
    public func index(_ relatives: [String]) {
        var fresh: [(relative: String, stamp: Stamp, manifest: Manifest)] = []
        for relative in relatives {
            guard case .chunked(let stamp, let manifest)? = try? chunkUnlessCurrent(relative, attempts: 1) else { continue }
            fresh.append((relative, stamp, manifest))
        }
        guard !fresh.isEmpty else { return }
        _ = try? database.readNow { connection in
            try connection.transactionNow {
                for file in fresh { try Self.insert(file.relative, file.stamp, file.manifest, into: connection) }
            }
        }
    }

    private enum Chunked {
        /// The row matches the file: its root.
        case current(ChunkID)
        /// Read and chunked now, with the stamp that held while it was read.
        case chunked(Stamp, Manifest)
    }

    private func chunkUnlessCurrent(_ relative: String, attempts: Int) throws(Failure) -> Chunked {
        let path = folder + "/" + relative
        guard let stamp = Stamp(path: path) else { throw Failure(description: "\(relative) is not a regular file in \(folder)") }
        let current: [UInt8]? = try wrapped {
            try database.readNow { connection in
                try connection.query("SELECT root FROM files WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ?",
                                     [.text(relative), .integer(stamp.size), .integer(stamp.mtime), .integer(stamp.inode)]) { $0.blob(0) }.first
            }
        }
        if let current { return .current(ChunkID(bytes: current)) }
        let manifest: Manifest
        do {
            manifest = try FileChunker.chunk(path: path).manifest
        } catch {
            throw Failure(description: error.description)
        }
        // The file may have changed while it was read: only a stamp that held is recorded. A
        // file written all the time (a log) is left for a later pass after a few tries.
        guard Stamp(path: path) == stamp else {
            guard attempts > 1 else { throw Failure(description: "\(relative) kept changing while it was read; not indexed now") }
            return try chunkUnlessCurrent(relative, attempts: attempts - 1)
        }
        return .chunked(stamp, manifest)
    }

    /// The rows of `relative` (its old ones replaced), inside the caller's transaction.
    private static func insert(_ relative: String, _ stamp: Stamp, _ manifest: Manifest, into connection: Connection) throws {
        try connection.run("DELETE FROM files WHERE path = ?", [.text(relative)])
        try connection.run("INSERT INTO files (path, size, mtime_ns, inode, root) VALUES (?, ?, ?, ?, ?)",
                           [.text(relative), .integer(stamp.size), .integer(stamp.mtime), .integer(stamp.inode), .blob(manifest.root.bytes)])
        var offset = 0
        for entry in manifest.entries {
            try connection.run("INSERT INTO chunks (path, offset, id, length) VALUES (?, ?, ?, ?)",
                               [.text(relative), .integer(Int64(offset)), .blob(entry.id.bytes), .integer(Int64(entry.length))])
            offset += entry.length
        }
    }

    /// Indexes every regular file under the folder (hidden files and the state directory
    /// aside) and forgets files that are gone. Returns how many files are indexed.
    @discardableResult
    public func indexAll() throws(Failure) -> Int {
        try indexAll(walked: Self.files(under: folder))
    }

    /// `indexAll` over the files a walk of the folder found.
    func indexAll(walked: [String]) throws(Failure) -> Int {
        // A file that vanished or keeps changing meanwhile is skipped, not the whole index.
        let present = walked.filter { relative in
            do {
                try index(relative)
                return true
            } catch {
                return false
            }
        }
        try forgetVanished(besides: Set(present))
        return present.count
    }

    /// Drops the rows of files the walk did not find, unless a file is at that path now. The
    /// metadata sync renames files (`moved`) while this index is built at start, and a walk
    /// that passed before a rename misses the new path: deleting its row left the node
    /// holding a file it never served again — the only copy of a version, in the randomized
    /// real-node test (seed 192409293), which no other node could then fetch.
    func forgetVanished(besides seen: Set<String>) throws(Failure) {
        let known: [String] = try wrapped { try database.readNow { try $0.query("SELECT path FROM files", []) { $0.text(0) } } }
        let gone = known.filter { !seen.contains($0) && Stamp(path: folder + "/" + $0) == nil }
        try wrapped {
            try database.readNow { connection in
                try connection.transactionNow {
                    for relative in gone { try connection.run("DELETE FROM files WHERE path = ?", [.text(relative)]) }
                }
            }
        }
    }

    /// Where a chunk can be read now: a location whose file still has the stamp it was
    /// indexed with. A stale file is indexed again first; nil when no file holds the chunk.
    public func locate(_ id: ChunkID) throws(Failure) -> (path: String, offset: Int, length: Int)? {
        for _ in 0..<2 {
            let rows: [(String, Int64, Int64, Int64, Int64, Int64)] = try wrapped {
                try database.readNow { connection in
                    try connection.query("""
                        SELECT chunks.path, chunks.offset, chunks.length, files.size, files.mtime_ns, files.inode
                        FROM chunks JOIN files ON files.path = chunks.path WHERE chunks.id = ?
                        """, [.blob(id.bytes)]) { ($0.text(0), $0.integer(1), $0.integer(2), $0.integer(3), $0.integer(4), $0.integer(5)) }
                }
            }
            var reindexed = false
            for (relative, offset, length, size, mtime, inode) in rows {
                let stamp = Stamp(path: folder + "/" + relative)
                if stamp?.size == size && stamp?.mtime == mtime && stamp?.inode == inode {
                    return (folder + "/" + relative, Int(offset), Int(length))
                }
                // Stale: the file changed or went away since it was indexed.
                if stamp == nil {
                    try wrapped { try database.readNow { try $0.run("DELETE FROM files WHERE path = ?", [.text(relative)]) } }
                } else {
                    try index(relative)
                }
                reindexed = true
            }
            if !reindexed { return nil }
        }
        return nil
    }

    /// Whether the folder holds a file with content `root` (as last indexed): one indexed
    /// lookup, not the manifest's rows.
    public func holds(_ root: ChunkID) throws(Failure) -> Bool {
        try wrapped {
            try database.readNow { connection in
                try !connection.query("SELECT 1 FROM files WHERE root = ? LIMIT 1", [.blob(root.bytes)]) { $0.integer(0) }.isEmpty
            }
        }
    }

    /// The manifest of content the folder holds (any file with that root), or nil.
    public func manifest(of root: ChunkID) throws(Failure) -> Manifest? {
        try wrapped {
            try database.readNow { connection -> Manifest? in
                guard let path = try connection.query("SELECT path FROM files WHERE root = ? LIMIT 1", [.blob(root.bytes)], { $0.text(0) }).first
                else { return nil }
                let entries = try connection.query("SELECT id, length FROM chunks WHERE path = ? ORDER BY offset", [.text(path)]) { row in
                    Manifest.Entry(id: ChunkID(bytes: row.blob(0)), length: Int(row.integer(1)))
                }
                let manifest = Manifest(entries: entries)
                return manifest.root == root ? manifest : nil
            }
        }
    }

    /// Records a file whose chunks were all verified as they were written (a finished
    /// download): no need to read it again.
    public func record(_ relative: String, manifest: Manifest) throws(Failure) {
        guard let stamp = Stamp(path: folder + "/" + relative) else { throw Failure(description: "\(relative) is not a regular file in \(folder)") }
        try wrapped { try database.readNow { connection in try connection.transactionNow { try Self.insert(relative, stamp, manifest, into: connection) } } }
    }

    /// Follows a rename of a file or a directory (every file under it) done by the caller: a
    /// rename keeps size, mtime and inode, so the entries stay current under the new path and
    /// the content is served without being read again.
    public func moved(from: String, to: String) throws(Failure) {
        try wrapped { try database.readNow { connection in try connection.transactionNow { try Self.moveRows(from: from, to: to, in: connection) } } }
    }

    /// The rows of `from` and of everything under it, renamed to `to`, inside the caller's
    /// transaction.
    private static func moveRows(from: String, to: String, in connection: Connection) throws {
        // "from/" ≤ path < "from0" (byte order; '0' follows '/') is everything under it.
        let rows = try connection.query("SELECT path FROM files WHERE path = ? OR (path >= ? AND path < ?)",
                                        [.text(from), .text(from + "/"), .text(from + "0")]) { $0.text(0) }
        for old in rows {
            let new = to + String(decoding: old.utf8.dropFirst(from.utf8.count), as: UTF8.self)
            // The new row first, then its chunks, then the old row (the chunks' foreign key
            // holds at every step).
            try connection.run("DELETE FROM files WHERE path = ?", [.text(new)])
            try connection.run("INSERT INTO files (path, size, mtime_ns, inode, root) SELECT ?, size, mtime_ns, inode, root FROM files WHERE path = ?",
                               [.text(new), .text(old)])
            try connection.run("UPDATE chunks SET path = ? WHERE path = ?", [.text(new), .text(old)])
            try connection.run("DELETE FROM files WHERE path = ?", [.text(old)])
        }
    }

    /// A file fetched into `staged` (indexed there as it completed) and then put in place at
    /// `relative` — renamed, its mode and modification time set by the node: its rows follow
    /// it, with the file's stamp as it is now, when it is still the file that landed (`inode`,
    /// `size`, the `mtime` the node gave it). It is then served from there without being read
    /// again; otherwise its first request reads it. (Left under the staging name, a received
    /// file was never served on: a node passed on only what it wrote itself.)
    public func landed(_ staged: String, at relative: String, inode: Int64, size: Int64, mtime: Int64) throws(Failure) {
        let stamp = Stamp(path: folder + "/" + relative).flatMap { $0.inode == inode && $0.size == size && $0.mtime == mtime ? $0 : nil }
        // One commit for both: this runs for every file received.
        try wrapped {
            try database.readNow { connection in
                try connection.transactionNow {
                    try Self.moveRows(from: staged, to: relative, in: connection)
                    guard let stamp else { return }
                    try connection.run("UPDATE files SET size = ?, mtime_ns = ?, inode = ? WHERE path = ?",
                                       [.integer(stamp.size), .integer(stamp.mtime), .integer(stamp.inode), .text(relative)])
                }
            }
        }
    }

    /// Forgets a file that was removed: its chunks are no longer offered from it.
    public func forget(_ relative: String) throws(Failure) {
        try wrapped { try database.readNow { try $0.run("DELETE FROM files WHERE path = ?", [.text(relative)]) } }
    }

    /// The folder-relative form of `path` (absolute or relative to the folder), or nil when
    /// it lies outside the folder.
    public func relative(_ path: String) -> String? {
        let base = folder.hasSuffix("/") ? String(folder.dropLast()) : folder
        if path.hasPrefix("/") {
            guard path.hasPrefix(base + "/") else { return nil }
            let rest = String(path.dropFirst(base.count + 1))
            return rest.isEmpty || rest.split(separator: "/").contains("..") ? nil : rest
        }
        return path.split(separator: "/").contains("..") ? nil : path
    }

    /// Counts for status lines.
    public func counts() throws(Failure) -> (files: Int, chunks: Int) {
        try wrapped {
            try database.readNow { connection in
                let files = try connection.query("SELECT COUNT(*) FROM files", []) { $0.integer(0) }.first ?? 0
                let chunks = try connection.query("SELECT COUNT(*) FROM chunks", []) { $0.integer(0) }.first ?? 0
                return (Int(files), Int(chunks))
            }
        }
    }

    private func wrapped<T>(_ body: () throws -> T) throws(Failure) -> T {
        do {
            return try body()
        } catch {
            throw Failure(description: "the index \(database.path): \(error)")
        }
    }

    /// The version store inside the folder (replaced and deleted versions, kept by the metadata
    /// sync): hidden from the synced tree, but indexed, so peers can fetch old versions too.
    public static let versionStore = ".harp-versions"

    /// Regular files under `root`, relative, sorted; names starting with "." are skipped, but
    /// for the version store.
    static func files(under root: String) -> [String] {
        var out: [String] = []
        func walk(_ relative: String) {
            let path = relative.isEmpty ? root : root + "/" + relative
            guard let directory = opendir(path) else { return }
            defer { closedir(directory) }
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name.hasPrefix("."), !(relative.isEmpty && name == versionStore) { continue }
                let child = relative.isEmpty ? name : relative + "/" + name
                var info = stat()
                guard lstat(root + "/" + child, &info) == 0 else { continue }
                switch info.st_mode & S_IFMT {
                case S_IFDIR: walk(child)
                case S_IFREG: out.append(child)
                default: break  // links, sockets, devices are not synced
                }
            }
        }
        walk("")
        return out.sorted()
    }
}
