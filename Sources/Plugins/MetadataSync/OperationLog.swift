import CShims
import BlockExchange
import Glibc
import HarpKernel

/// The metadata in SQLite (`dir/metadata.sqlite`, WAL, synchronous FULL): every operation,
/// the clock, and what each synced path on disk is (item, inode, size, mtime, root) — so a
/// node killed at any moment restarts with every acknowledged operation and knows which disk
/// changes it has already turned into operations.
struct OperationLog: Sendable {
    let database: Database

    static let migrations = Database.Migrations(plugin: "crdt", steps: [
        """
        CREATE TABLE operations (origin BLOB NOT NULL, sequence INTEGER NOT NULL, data BLOB NOT NULL,
                                 PRIMARY KEY (origin, sequence)) WITHOUT ROWID;
        CREATE TABLE clock (id INTEGER PRIMARY KEY CHECK (id = 0), wall INTEGER NOT NULL, counter INTEGER NOT NULL);
        CREATE TABLE paths (path TEXT PRIMARY KEY, item BLOB NOT NULL, directory INTEGER NOT NULL, inode INTEGER NOT NULL,
                            size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, root BLOB);
        """,
        // Settling: what the dropped moves left each item, and per origin the sequence every
        // replica had reached (OperationCodec has the blobs' layout).
        """
        CREATE TABLE settled (item BLOB PRIMARY KEY, placement BLOB NOT NULL, deletion BLOB) WITHOUT ROWID;
        CREATE TABLE floors (origin BLOB PRIMARY KEY, sequence INTEGER NOT NULL) WITHOUT ROWID;
        """,
        // Proofs: each operation's chain hash (OperationChain), each floor's; and a peer's
        // settled-state parts, staged here until all have come (memory stays bounded).
        """
        ALTER TABLE operations ADD COLUMN chain BLOB;
        ALTER TABLE floors ADD COLUMN chain BLOB;
        CREATE TABLE settled_parts (peer BLOB NOT NULL, part INTEGER NOT NULL, total INTEGER NOT NULL, body BLOB NOT NULL,
                                    PRIMARY KEY (peer, part)) WITHOUT ROWID;
        ALTER TABLE paths ADD COLUMN mode INTEGER NOT NULL DEFAULT 420;
        """,
    ])

    /// A log that cannot be read as it was written: startup stops and says so (a replica
    /// loaded smaller than it is would tell its peers it lacks what it has).
    struct Unreadable: Error, CustomStringConvertible {
        let detail: String
        var description: String { "the metadata log cannot be read: \(detail)" }
    }

    init(path: String) throws(DatabaseError) {
        database = try Database(path: path, migrations: [Self.migrations])
    }

    /// A stopped node's log, read only (`harp storage ls/history/log` without a running node).
    init(readingOnly path: String) throws(DatabaseError) {
        database = try Database(readingOnly: path)
    }

    /// Every operation kept, the settled state, and the clock as last recorded.
    func load() throws(DatabaseError) -> (operations: [LoggedOperation], settled: Replica.Settled, wall: UInt64, counter: UInt32,
                                          paths: [String: PathState]) {
        try database.readNow { connection in
            let rows = try connection.query("SELECT data, chain FROM operations", []) { ($0.blob(0), $0.isNull(1) ? nil : $0.blob(1)) }
            let operations = try rows.map { data, chain -> LoggedOperation in
                guard let chain, chain.count == 32 else {
                    throw Unreadable(detail: "an operation without its chain hash (written by a harp before operation proofs): move metadata.sqlite away and restart to take the folder's state from the peers")
                }
                do {
                    var reader = ByteReader(data)
                    var logged = try OperationCodec.decodeOne(&reader)
                    guard reader.atEnd else { throw SyncRefusal.malformed("bytes after the operation") }
                    logged.chain = chain
                    return logged
                } catch {
                    throw Unreadable(detail: "a stored operation does not decode: \(error)")
                }
            }
            let clock = try connection.query("SELECT wall, counter FROM clock WHERE id = 0", []) { ($0.integer(0), $0.integer(1)) }.first
            var paths: [String: PathState] = [:]
            try connection.run("SELECT path, item, directory, inode, size, mtime_ns, root, mode FROM paths") { row in
                guard let item = ItemID(bytes: row.blob(1)) else { throw Unreadable(detail: "the item of \(row.text(0))") }
                let root = row.isNull(6) ? nil : row.blob(6)
                paths[row.text(0)] = PathState(item: item, isDirectory: row.integer(2) != 0, inode: row.integer(3),
                                               size: row.integer(4), mtime: row.integer(5),
                                               root: root.flatMap { $0.count == 32 ? ChunkID(bytes: $0) : nil },
                                               mode: UInt16(truncatingIfNeeded: row.integer(7)) & 0o777)
            }
            return (operations, try Self.settled(connection), UInt64(clock?.0 ?? 0), UInt32(clock?.1 ?? 0), paths)
        }
    }

    /// Records operations and the clock in one transaction; durable when it returns.
    func append(_ operations: [LoggedOperation], clock: HybridLogicalClock) async throws(DatabaseError) {
        let rows = operations.map { ($0.origin.bytes, Int64(bitPattern: $0.sequence), OperationCodec.encode([$0]), $0.chain) }
        let wall = Int64(bitPattern: clock.wall), counter = Int64(clock.counter)
        try await database.write { connection in
            for (origin, sequence, data, chain) in rows {
                try connection.run("INSERT OR IGNORE INTO operations (origin, sequence, data, chain) VALUES (?, ?, ?, ?)",
                                   [.blob(origin), .integer(sequence), .blob(data), chain.map { .blob($0) } ?? .null])
            }
            try connection.run("INSERT OR REPLACE INTO clock (id, wall, counter) VALUES (0, ?, ?)", [.integer(wall), .integer(counter)])
        }
    }

    /// The settled state as recorded (what a peer that joined late is sent).
    func settled() throws(DatabaseError) -> Replica.Settled {
        try database.readNow { try Self.settled($0) }
    }

    private static func settled(_ connection: Connection) throws -> Replica.Settled {
        var settled = Replica.Settled()
        let rows = try connection.query("SELECT item, placement, deletion FROM settled", []) { ($0.blob(0), $0.blob(1), $0.isNull(2) ? nil : $0.blob(2)) }
        for (item, placement, deletion) in rows {
            guard let id = ItemID(bytes: item) else { throw Unreadable(detail: "a settled item ID of \(item.count) bytes") }
            do {
                settled.placements[id] = try OperationCodec.decodePlacement(placement)
                if let deletion { settled.deletions[id] = try OperationCodec.decodeDeletion(deletion) }
            } catch {
                throw Unreadable(detail: "the settled placement of \(id) does not decode: \(error)")
            }
        }
        try connection.run("SELECT origin, sequence, chain FROM floors") { row in
            let origin = NodeID(bytes: row.blob(0))
            settled.floor[origin] = UInt64(bitPattern: row.integer(1))
            if !row.isNull(2) { settled.floorChains[origin] = row.blob(2) }
        }
        return settled
    }

    // MARK: A peer's settled state, staged

    /// Keeps one part of `peer`'s settled state (its frame body as received); returns how many
    /// distinct parts of `total` are staged now. Parts of another total are dropped first.
    func stagePart(_ body: [UInt8], index: Int, total: Int, from peer: NodeID) async throws(DatabaseError) -> Int {
        try await database.write { connection in
            try connection.run("DELETE FROM settled_parts WHERE peer = ? AND total != ?", [.blob(peer.bytes), .integer(Int64(total))])
            try connection.run("INSERT OR REPLACE INTO settled_parts (peer, part, total, body) VALUES (?, ?, ?, ?)",
                               [.blob(peer.bytes), .integer(Int64(index)), .integer(Int64(total)), .blob(body)])
            return Int(try connection.query("SELECT COUNT(*) FROM settled_parts WHERE peer = ?", [.blob(peer.bytes)]) { $0.integer(0) }.first ?? 0)
        }
    }

    /// The staged parts' bodies of `peer`, which are forgotten.
    func takeParts(from peer: NodeID) async throws(DatabaseError) -> [[UInt8]] {
        try await database.write { connection in
            let bodies = try connection.query("SELECT body FROM settled_parts WHERE peer = ? ORDER BY part", [.blob(peer.bytes)]) { $0.blob(0) }
            try connection.run("DELETE FROM settled_parts WHERE peer = ?", [.blob(peer.bytes)])
            return bodies
        }
    }

    func dropParts(from peer: NodeID) async throws(DatabaseError) {
        try await database.write { try $0.run("DELETE FROM settled_parts WHERE peer = ?", [.blob(peer.bytes)]) }
    }

    /// Replaces the settled state with a peer's (`Replica.install`) and drops the moves it
    /// covers, in one transaction.
    func install(_ settled: Replica.Settled, dropped: [LoggedOperation]) async throws(DatabaseError) {
        let deletions = Dictionary(uniqueKeysWithValues: settled.placements.keys.map { ($0, settled.deletions[$0]) })
        try await writeSettled(settled.placements, deletions: deletions, dropped: dropped, floor: settled.floor,
                               chains: settled.floorChains, replacing: true)
    }

    /// Records a settlement in one transaction: the dropped moves go, what they left each
    /// item and the new floor come in (a kill between leaves either all of it or none).
    func settle(_ settlement: ReplicatedTree.Settlement, dropped: [LoggedOperation], floor: [NodeID: UInt64],
                chains: [NodeID: [UInt8]]) async throws(DatabaseError) {
        try await writeSettled(settlement.placements, deletions: settlement.deletions, dropped: dropped, floor: floor, chains: chains,
                               replacing: false)
    }

    /// One transaction: `dropped` out of the log; each item's placement and deletion (nil:
    /// none) and each origin's floor in — over the recorded ones, or instead of them all.
    private func writeSettled(_ placements: [ItemID: ReplicatedTree.Placement], deletions: [ItemID: ReplicatedTree.Deletion?],
                              dropped: [LoggedOperation], floor: [NodeID: UInt64], chains: [NodeID: [UInt8]],
                              replacing: Bool) async throws(DatabaseError) {
        let removed = dropped.map { ($0.origin.bytes, Int64(bitPattern: $0.sequence)) }
        let items = placements.map { item, placement in
            (item.bytes, OperationCodec.encode(placement), (deletions[item] ?? nil).map(OperationCodec.encode))
        }
        let floors = floor.map { ($0.key.bytes, Int64(bitPattern: $0.value), chains[$0.key]) }
        try await database.write { connection in
            if replacing {
                try connection.run("DELETE FROM settled", [])
                try connection.run("DELETE FROM floors", [])
            }
            for (origin, sequence) in removed {
                try connection.run("DELETE FROM operations WHERE origin = ? AND sequence = ?", [.blob(origin), .integer(sequence)])
            }
            for (item, placement, deletion) in items {
                try connection.run("INSERT OR REPLACE INTO settled (item, placement, deletion) VALUES (?, ?, ?)",
                                   [.blob(item), .blob(placement), deletion.map { .blob($0) } ?? .null])
            }
            for (origin, sequence, chain) in floors {
                try connection.run("INSERT OR REPLACE INTO floors (origin, sequence, chain) VALUES (?, ?, ?)",
                                   [.blob(origin), .integer(sequence), chain.map { .blob($0) } ?? .null])
            }
        }
    }

    /// Replaces the recorded disk state of these paths (nil: the path is gone).
    func record(_ changes: [String: PathState?]) async throws(DatabaseError) {
        let rows = changes.map { ($0.key, $0.value) }
        try await database.write { connection in
            for (path, state) in rows {
                guard let state else {
                    try connection.run("DELETE FROM paths WHERE path = ?", [.text(path)])
                    continue
                }
                try connection.run("""
                    INSERT OR REPLACE INTO paths (path, item, directory, inode, size, mtime_ns, root, mode) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """, [.text(path), .blob(state.item.bytes), .integer(state.isDirectory ? 1 : 0), .integer(state.inode), .integer(state.size),
                          .integer(state.mtime), state.root.map { .blob($0.bytes) } ?? .null, .integer(Int64(state.mode))])
            }
        }
    }
}

/// What a synced path is on disk, as last seen or written by the node.
struct PathState: Sendable, Equatable {
    let item: ItemID
    let isDirectory: Bool
    let inode: Int64
    let size: Int64
    let mtime: Int64
    let root: ChunkID?
    /// Permission bits (rwx for owner, group, other).
    var mode: UInt16 = 0o644

    init(item: ItemID, isDirectory: Bool, inode: Int64, size: Int64, mtime: Int64, root: ChunkID?, mode: UInt16 = 0o644) {
        self.item = item
        self.isDirectory = isDirectory
        self.inode = inode
        self.size = size
        self.mtime = mtime
        self.root = root
        self.mode = mode
    }

    /// From what lstat says; nil for anything but a regular file or a directory.
    init?(_ info: stat, item: ItemID, root: ChunkID?) {
        let kind = info.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFDIR else { return nil }
        self.init(item: item, isDirectory: kind == S_IFDIR, inode: Int64(info.st_ino), size: Int64(info.st_size),
                  mtime: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec), root: root,
                  mode: UInt16(info.st_mode & 0o777))
    }
}
