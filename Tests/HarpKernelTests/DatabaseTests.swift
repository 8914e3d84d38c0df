import Foundation
import HarpKernel
import Testing

/// The kernel's SQLite layer: migrations, transactions, durability, use from loops.
@Suite("database")
struct DatabaseTests {
    static let migrations = Database.Migrations(plugin: "test", steps: [
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
        "ALTER TABLE items ADD COLUMN size INTEGER NOT NULL DEFAULT 0",
    ])

    @Test("migrations run once each, in order; writes survive a reopen; a throwing write is rolled back")
    func migrationsAndTransactions() async throws {
        let path = NSTemporaryDirectory() + "harp-db-\(UUID().uuidString).sqlite"
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        do {
            let database = try Database(path: path, migrations: [Self.migrations])
            try await database.write { connection in
                try connection.run("INSERT INTO items (name, size) VALUES (?, ?)", [.text("a"), .integer(1)])
                try connection.run("INSERT INTO items (name, size) VALUES (?, ?)", [.text("b"), .integer(2)])
            }
            await #expect(throws: DatabaseError.self) {
                try await database.write { connection in
                    try connection.run("INSERT INTO items (name) VALUES (?)", [.text("c")])
                    try connection.run("INSERT INTO items (name) VALUES (?)", [.text("a")])  // UNIQUE: the whole write goes
                }
            }
        }
        // Reopened: the migrations are not run again (the ALTER would fail), the rows are there.
        let reopened = try Database(path: path, migrations: [Self.migrations])
        let rows = try await reopened.read { connection in
            try connection.query("SELECT name, size FROM items ORDER BY name", []) { "\($0.text(0))=\($0.integer(1))" }
        }
        #expect(rows == ["a=1", "b=2"])
        let steps = try reopened.readNow { connection in
            try connection.query("SELECT step FROM harp_migrations WHERE plugin = 'test'", []) { $0.integer(0) }
        }
        #expect(steps == [1, 2])
    }

    @Test("tasks on two loops write at once; every write lands, in one serial order")
    func concurrentWrites() async throws {
        let path = NSTemporaryDirectory() + "harp-db-\(UUID().uuidString).sqlite"
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let database = try Database(path: path, migrations: [Self.migrations])
        let loops = try [EventLoop(index: 0), EventLoop(index: 1)]
        defer { loops.forEach { $0.shutdown() } }
        await withTaskGroup(of: Void.self) { group in
            for index in 0..<200 {
                let loop = loops[index % 2]
                group.addTask {
                    await loop.spawn {
                        try? await database.write { connection in
                            try connection.run("INSERT INTO items (name, size) VALUES (?, ?)", [.text("item \(index)"), .integer(Int64(index))])
                        }
                    }.value
                }
            }
        }
        let total = try await database.read { connection in
            try connection.query("SELECT COUNT(*), SUM(size) FROM items", []) { "\($0.integer(0)) \($0.integer(1))" }
        }
        #expect(total == ["200 19900"])
        let mode = try database.readNow { connection in try connection.query("PRAGMA journal_mode", []) { $0.text(0) } }
        #expect(mode == ["wal"])
    }

    @Test("blocking calls from four threads meet queued writes: each runs alone (no torn transaction), and sees every write queued before it")
    func blockingCallsBesideQueuedJobs() async throws {
        let path = NSTemporaryDirectory() + "harp-db-\(UUID().uuidString).sqlite"
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let database = try Database(path: path, migrations: [Self.migrations])
        let threads = (0..<4).map { WorkerThread(name: "test-\($0)") }
        defer { threads.forEach { $0.stop() } }
        await withTaskGroup(of: Void.self) { group in
            for (number, thread) in threads.enumerated() {
                group.addTask {
                    await thread.run {
                        for step in 0..<200 {
                            // A two-row transaction: another user of the connection between its
                            // statements would see (or break) half of it.
                            try? database.readNow { connection in
                                try connection.transactionNow {
                                    try connection.run("INSERT INTO items (name, size) VALUES (?, ?)", [.text("t\(number)-\(step)-a"), .integer(1)])
                                    try connection.run("INSERT INTO items (name, size) VALUES (?, ?)", [.text("t\(number)-\(step)-b"), .integer(2)])
                                }
                            }
                        }
                    }
                }
            }
            group.addTask {
                for step in 0..<200 {
                    try? await database.write { try $0.run("INSERT INTO items (name, size) VALUES (?, ?)", [.text("queued-\(step)"), .integer(3)]) }
                    // A blocking read right after an awaited write sees it.
                    let seen = try? database.readNow { try $0.query("SELECT COUNT(*) FROM items WHERE name = ?", [.text("queued-\(step)")]) { $0.integer(0) } }
                    if seen != [1] { Issue.record("write \(step) not seen: \(String(describing: seen))") }
                }
            }
        }
        let total = try database.readNow { connection in
            try connection.query("SELECT COUNT(*), SUM(size) FROM items", []) { "\($0.integer(0)) \($0.integer(1))" }
        }
        #expect(total == ["1800 3000"])
    }

    @Test("a database that cannot be opened is an error naming the path")
    func unopenable() {
        #expect(throws: DatabaseError.self) { try Database(path: "/nonexistent/dir/x.sqlite", migrations: []) }
    }
}
