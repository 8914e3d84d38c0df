import Glibc
import HarpKernel

/// Downloads in SQLite, so that a killed node resumes them: the target, the manifest once
/// known, and every slot whose bytes were synced to the partial file before it was recorded.
/// The index database commits without waiting for the disk (`Database.Durability.cache`): a
/// power cut may lose the last records — those slots are fetched again — and a record never
/// claims bytes that were not synced first (WAL commits reach the disk in order, after the
/// partial file's fdatasync).
struct TransferStore: Sendable {
    let database: Database

    static let migration = """
        CREATE TABLE transfers (root BLOB PRIMARY KEY, output TEXT NOT NULL, manifest BLOB);
        CREATE TABLE transfer_slots (root BLOB NOT NULL REFERENCES transfers(root) ON DELETE CASCADE, slot INTEGER NOT NULL,
                                     PRIMARY KEY (root, slot)) WITHOUT ROWID;
        """

    struct Saved: Sendable {
        let root: ChunkID
        let output: String
        let manifest: Manifest?
        let verified: Set<Int>
    }

    /// Every unfinished download.
    func all() throws(DatabaseError) -> [Saved] {
        try saved(where: "", [])
    }

    /// The recorded download of `root`, if any (one row: starting a download read and
    /// decoded every recorded one before).
    func saved(_ root: ChunkID) throws(DatabaseError) -> Saved? {
        try saved(where: " WHERE root = ?", [.blob(root.bytes)]).first
    }

    private func saved(where condition: String, _ arguments: [SQLValue]) throws(DatabaseError) -> [Saved] {
        try database.readNow { connection in
            let rows = try connection.query("SELECT root, output, manifest FROM transfers" + condition, arguments) { row in
                (row.blob(0), row.text(1), row.isNull(2) ? nil : row.blob(2))
            }
            return try rows.compactMap { root, output, manifest -> Saved? in
                guard root.count == 32 else { return nil }
                let id = ChunkID(bytes: root)
                let decoded = manifest.flatMap { Manifest(encoded: $0) }.flatMap { $0.root == id ? $0 : nil }
                let slots = try connection.query("SELECT slot FROM transfer_slots WHERE root = ?", [.blob(root)]) { Int($0.integer(0)) }
                return Saved(root: id, output: output, manifest: decoded, verified: decoded == nil ? [] : Set(slots))
            }
        }
    }

    /// Starts recording a download (forgetting an older one of the same root elsewhere).
    func begin(_ root: ChunkID, output: String) throws(DatabaseError) {
        try database.readNow { connection in
            try connection.transactionNow {
                let old = try connection.query("SELECT output FROM transfers WHERE root = ?", [.blob(root.bytes)]) { $0.text(0) }.first
                if old != output {
                    try connection.run("DELETE FROM transfer_slots WHERE root = ?", [.blob(root.bytes)])
                    try connection.run("DELETE FROM transfers WHERE root = ?", [.blob(root.bytes)])
                    try connection.run("INSERT INTO transfers (root, output) VALUES (?, ?)", [.blob(root.bytes), .text(output)])
                }
            }
        }
    }

    func saveManifest(_ manifest: Manifest, for root: ChunkID) throws(DatabaseError) {
        try database.readNow { try $0.run("UPDATE transfers SET manifest = ? WHERE root = ?", [.blob(manifest.encoded), .blob(root.bytes)]) }
    }

    /// Records slots whose bytes are already synced to the partial file.
    func record(_ slots: [Int], for root: ChunkID) throws(DatabaseError) {
        guard !slots.isEmpty else { return }
        try database.readNow { connection in
            try connection.transactionNow {
                for slot in slots {
                    try connection.run("INSERT OR IGNORE INTO transfer_slots (root, slot) VALUES (?, ?)", [.blob(root.bytes), .integer(Int64(slot))])
                }
            }
        }
    }

    func forget(_ root: ChunkID) throws(DatabaseError) {
        try database.readNow { connection in
            try connection.transactionNow {
                try connection.run("DELETE FROM transfer_slots WHERE root = ?", [.blob(root.bytes)])
                try connection.run("DELETE FROM transfers WHERE root = ?", [.blob(root.bytes)])
            }
        }
    }
}
