import BlockExchange
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
    ])

    init(path: String) throws(DatabaseError) {
        database = try Database(path: path, migrations: [Self.migrations])
    }

    /// Every operation, and the clock as last recorded.
    func load() throws(DatabaseError) -> (operations: [LoggedOperation], wall: UInt64, counter: UInt32, paths: [String: PathState]) {
        try database.readNow { connection in
            let blobs = try connection.query("SELECT data FROM operations", []) { $0.blob(0) }
            let operations = blobs.flatMap { OperationCodec.decode($0) ?? [] }
            let clock = try connection.query("SELECT wall, counter FROM clock WHERE id = 0", []) { ($0.integer(0), $0.integer(1)) }.first
            var paths: [String: PathState] = [:]
            try connection.run("SELECT path, item, directory, inode, size, mtime_ns, root FROM paths") { row in
                guard let item = ItemID(bytes: row.blob(1)) else { return }
                let root = row.isNull(6) ? nil : row.blob(6)
                paths[row.text(0)] = PathState(item: item, isDirectory: row.integer(2) != 0, inode: row.integer(3),
                                               size: row.integer(4), mtime: row.integer(5),
                                               root: root.flatMap { $0.count == 32 ? ChunkID(bytes: $0) : nil })
            }
            return (operations, UInt64(clock?.0 ?? 0), UInt32(clock?.1 ?? 0), paths)
        }
    }

    /// Records operations and the clock in one transaction; durable when it returns.
    func append(_ operations: [LoggedOperation], clock: HybridLogicalClock) async throws(DatabaseError) {
        let rows = operations.map { ($0.origin.bytes, Int64(bitPattern: $0.sequence), OperationCodec.encode([$0])) }
        let wall = Int64(bitPattern: clock.wall), counter = Int64(clock.counter)
        try await database.write { connection in
            for (origin, sequence, data) in rows {
                try connection.run("INSERT OR IGNORE INTO operations (origin, sequence, data) VALUES (?, ?, ?)",
                                   [.blob(origin), .integer(sequence), .blob(data)])
            }
            try connection.run("INSERT OR REPLACE INTO clock (id, wall, counter) VALUES (0, ?, ?)", [.integer(wall), .integer(counter)])
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
                    INSERT OR REPLACE INTO paths (path, item, directory, inode, size, mtime_ns, root) VALUES (?, ?, ?, ?, ?, ?, ?)
                    """, [.text(path), .blob(state.item.bytes), .integer(state.isDirectory ? 1 : 0), .integer(state.inode), .integer(state.size),
                          .integer(state.mtime), state.root.map { .blob($0.bytes) } ?? .null])
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
}
