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
        // Settling: what the dropped moves left each item, and per origin the sequence every
        // replica had reached (OperationCodec has the blobs' layout).
        """
        CREATE TABLE settled (item BLOB PRIMARY KEY, placement BLOB NOT NULL, deletion BLOB) WITHOUT ROWID;
        CREATE TABLE floors (origin BLOB PRIMARY KEY, sequence INTEGER NOT NULL) WITHOUT ROWID;
        """,
    ])

    init(path: String) throws(DatabaseError) {
        database = try Database(path: path, migrations: [Self.migrations])
    }

    /// Every operation kept, the settled state, and the clock as last recorded.
    func load() throws(DatabaseError) -> (operations: [LoggedOperation], settled: Replica.Settled, wall: UInt64, counter: UInt32,
                                          paths: [String: PathState]) {
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
            return (operations, try Self.settled(connection), UInt64(clock?.0 ?? 0), UInt32(clock?.1 ?? 0), paths)
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

    /// The settled state as recorded (what a peer that joined late is sent).
    func settled() throws(DatabaseError) -> Replica.Settled {
        try database.readNow { try Self.settled($0) }
    }

    private static func settled(_ connection: Connection) throws -> Replica.Settled {
        var settled = Replica.Settled()
        try connection.run("SELECT item, placement, deletion FROM settled") { row in
            guard let item = ItemID(bytes: row.blob(0)), let placement = OperationCodec.decodePlacement(row.blob(1)) else { return }
            settled.placements[item] = placement
            if !row.isNull(2) { settled.deletions[item] = OperationCodec.decodeDeletion(row.blob(2)) }
        }
        try connection.run("SELECT origin, sequence FROM floors") { row in
            settled.floor[NodeID(bytes: row.blob(0))] = UInt64(bitPattern: row.integer(1))
        }
        return settled
    }

    /// Replaces the settled state with a peer's (`Replica.install`) and drops the moves it
    /// covers, in one transaction.
    func install(_ settled: Replica.Settled, dropped: [LoggedOperation]) async throws(DatabaseError) {
        let deletions = Dictionary(uniqueKeysWithValues: settled.placements.keys.map { ($0, settled.deletions[$0]) })
        try await writeSettled(settled.placements, deletions: deletions, dropped: dropped, floor: settled.floor, replacing: true)
    }

    /// Records a settlement in one transaction: the dropped moves go, what they left each
    /// item and the new floor come in (a kill between leaves either all of it or none).
    func settle(_ settlement: ReplicatedTree.Settlement, dropped: [LoggedOperation], floor: [NodeID: UInt64]) async throws(DatabaseError) {
        try await writeSettled(settlement.placements, deletions: settlement.deletions, dropped: dropped, floor: floor, replacing: false)
    }

    /// One transaction: `dropped` out of the log; each item's placement and deletion (nil:
    /// none) and each origin's floor in — over the recorded ones, or instead of them all.
    private func writeSettled(_ placements: [ItemID: ReplicatedTree.Placement], deletions: [ItemID: ReplicatedTree.Deletion?],
                              dropped: [LoggedOperation], floor: [NodeID: UInt64], replacing: Bool) async throws(DatabaseError) {
        let removed = dropped.map { ($0.origin.bytes, Int64(bitPattern: $0.sequence)) }
        let items = placements.map { item, placement in
            var bytes: [UInt8] = []
            OperationCodec.encode(placement, into: &bytes)
            return (item.bytes, bytes, (deletions[item] ?? nil).map(OperationCodec.encode))
        }
        let floors = floor.map { ($0.key.bytes, Int64(bitPattern: $0.value)) }
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
            for (origin, sequence) in floors {
                try connection.run("INSERT OR REPLACE INTO floors (origin, sequence) VALUES (?, ?)", [.blob(origin), .integer(sequence)])
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
