import CShims
import Dispatch
import Glibc
import Synchronization

/// One SQLite database, one connection, on a thread of its own: loops never wait for the disk.
/// Every call runs as a job on that thread, in order; `write` wraps its job in a transaction
/// (`BEGIN IMMEDIATE` … `COMMIT`, rolled back when the job throws). The database runs in WAL
/// mode with `synchronous = FULL` by default, so a job that returned is on disk: a kill -9 or
/// a power cut right after loses nothing it wrote. A database that only caches what the disk
/// holds elsewhere (a content index: lost rows are found again by hashing) may open with
/// `.cache` (`synchronous = NORMAL`): commits do not wait for the disk — a kill -9 still loses
/// nothing, a power cut may lose the last commits, never the database. Plugins bring their schema as numbered migrations, applied once
/// each, in order, at open (the `harp_migrations` table records them per plugin).
public final class Database: Sendable {
    /// What a plugin adds to the schema: its name and its steps (each one SQL script).
    public struct Migrations: Sendable {
        public let plugin: String
        public let steps: [String]
        public init(plugin: String, steps: [String]) {
            self.plugin = plugin
            self.steps = steps
        }
    }

    private let worker: DatabaseWorker
    public let path: String

    /// When a commit is on disk (see above).
    public enum Durability: Sendable {
        /// Each commit is on disk when it returns (`synchronous = FULL`).
        case durable
        /// Commits reach the disk with the next checkpoint (`synchronous = NORMAL`): for rows
        /// that can be found again. Each small file received paid about 6 fsyncs for its
        /// download's bookkeeping, a quarter of a receiving node's CPU.
        case cache
    }

    /// Opens (creating) the database at `path` and applies every migration not applied yet.
    public init(path: String, migrations: [Migrations], durability: Durability = .durable) throws(DatabaseError) {
        self.path = path
        worker = DatabaseWorker()
        let opened: Result<Connection, DatabaseError> = worker.runSync {
            Result { () throws(DatabaseError) -> Connection in
                let connection = try Connection(path: path, durability: durability)
                try connection.migrate(migrations)
                return connection
            }
        }
        worker.connection = try opened.get()
    }

    /// Opens an existing database read-only (a stopped node's, for the commands that read it):
    /// no migration, no write; fails when the file is missing.
    public init(readingOnly path: String) throws(DatabaseError) {
        self.path = path
        worker = DatabaseWorker()
        let opened: Result<Connection, DatabaseError> = worker.runSync {
            Result { () throws(DatabaseError) -> Connection in try Connection(path: path, readOnly: true) }
        }
        worker.connection = try opened.get()
    }

    deinit { worker.stop() }

    /// Runs `body` on the database thread (reads, or writes that need no transaction).
    public func read<T: Sendable>(_ body: @escaping @Sendable (Connection) throws -> T) async throws(DatabaseError) -> T {
        try await worker.run { connection throws(DatabaseError) in try DatabaseError.wrapping { try body(connection) } }.get()
    }

    /// Runs `body` in a transaction on the database thread; it is durable when this returns.
    public func write<T: Sendable>(_ body: @escaping @Sendable (Connection) throws -> T) async throws(DatabaseError) -> T {
        try await worker.run { connection throws(DatabaseError) in try connection.transactionNow { try body(connection) } }.get()
    }

    /// The same as `read`, blocking the calling thread (commands, tests; never a loop).
    public func readNow<T>(_ body: (Connection) throws -> T) throws(DatabaseError) -> T {
        try worker.runSync { Result { () throws(DatabaseError) -> T in try DatabaseError.wrapping { try body(worker.connection!) } } }.get()
    }
}

/// What went wrong, with SQLite's own message.
public struct DatabaseError: Error, CustomStringConvertible, Sendable {
    public let code: Int32
    public let message: String
    public var description: String { "SQLite error \(code): \(message)" }
    public init(code: Int32, message: String) {
        self.code = code
        self.message = message
    }

    /// Runs `body`; an error it throws that is not a DatabaseError becomes one (code -1).
    static func wrapping<T>(_ body: () throws -> T) throws(DatabaseError) -> T {
        do {
            return try body()
        } catch let error as DatabaseError {
            throw error
        } catch {
            throw DatabaseError(code: -1, message: "\(error)")
        }
    }
}

/// The connection and the thread that runs its queued jobs (`WorkerThread`). A blocking call
/// (`runSync`) that finds no job queued uses the connection on the caller's thread instead,
/// under the same lock: handing each one to the worker and back cost two context switches,
/// and a small file received made about ten such calls (with the thread hops of the block
/// exchange, context switching was a fifth of a receiving node's CPU in `bench/sync.sh`).
/// Order holds: a job queued before the call has finished before it runs inline.
final class DatabaseWorker: @unchecked Sendable {
    // @unchecked Sendable: `connection` is set once before any job but the opening one runs,
    // and then used only while `use` is held.
    private let thread = WorkerThread(name: "harp-sqlite")
    var connection: Connection?
    /// Held while the connection is in use; counts the jobs queued or running on the thread.
    private let use = Mutex<Int>(0)
    private let queued = Atomic<Int>(0)

    func stop() {
        thread.enqueue { [self] in use.withLock { _ in connection = nil } }  // closes the database on its own thread
        thread.stop()
    }

    func run<T: Sendable>(_ body: @escaping @Sendable (Connection) throws(DatabaseError) -> T) async -> Result<T, DatabaseError> {
        queued.add(1, ordering: .sequentiallyConsistent)
        return await thread.run { [self] in
            defer { queued.subtract(1, ordering: .sequentiallyConsistent) }
            return locked { Result { () throws(DatabaseError) -> T in try body(connection!) } }
        }
    }

    /// Runs `body` with the connection and waits for it (the caller is not a loop): on the
    /// caller's thread when no job is queued, else on the worker after them.
    func runSync<T>(_ body: () -> T) -> T {
        if queued.load(ordering: .sequentiallyConsistent) == 0 { return locked(body) }
        return thread.runSync { locked(body) }
    }

    private func locked<T>(_ body: () -> T) -> T {
        var result: T?
        use.withLock { _ in result = body() }
        return result!
    }
}

/// The connection, used only on its worker thread: statements are prepared once and kept.
public final class Connection {
    private var handle: OpaquePointer?
    private var statements: [String: OpaquePointer] = [:]

    init(path: String, readOnly: Bool = false, durability: Database.Durability = .durable) throws(DatabaseError) {
        var db: OpaquePointer?
        let flags = (readOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) | SQLITE_OPEN_NOMUTEX
        let status = sqlite3_open_v2(path, &db, flags, nil)
        guard status == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            sqlite3_close(db)
            throw DatabaseError(code: status, message: "\(path): \(message)")
        }
        handle = db
        sqlite3_busy_timeout(db, 5000)
        guard !readOnly else { return }
        try execute("PRAGMA journal_mode = WAL")
        try execute(durability == .durable ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL")
        try execute("PRAGMA foreign_keys = ON")
    }

    deinit {
        for statement in statements.values { sqlite3_finalize(statement) }
        sqlite3_close(handle)
    }

    private func error(_ status: Int32) -> DatabaseError {
        DatabaseError(code: status, message: String(cString: sqlite3_errmsg(handle)))
    }

    /// Runs SQL that returns no rows (one statement or a script of several).
    public func execute(_ sql: String) throws(DatabaseError) {
        var message: UnsafeMutablePointer<CChar>?
        let status = sqlite3_exec(handle, sql, nil, nil, &message)
        if status != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? "error"
            sqlite3_free(message)
            throw DatabaseError(code: status, message: text)
        }
    }

    /// Runs one statement with `parameters` bound in order; `row` is called for each result
    /// row. The statement is prepared once per connection and reused.
    public func run(_ sql: String, _ parameters: [SQLValue] = [], row: (Row) throws -> Void = { _ in }) throws(DatabaseError) {
        let statement: OpaquePointer
        if let cached = statements[sql] {
            statement = cached
        } else {
            var prepared: OpaquePointer?
            let status = sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &prepared, nil)
            guard status == SQLITE_OK, let prepared else { throw error(status) }
            statements[sql] = prepared
            statement = prepared
        }
        defer {
            sqlite3_reset(statement)
            sqlite3_clear_bindings(statement)
        }
        for (index, parameter) in parameters.enumerated() {
            let position = Int32(index + 1)
            let status: Int32 = switch parameter {
            case .null: sqlite3_bind_null(statement, position)
            case .integer(let value): sqlite3_bind_int64(statement, position, value)
            case .real(let value): sqlite3_bind_double(statement, position, value)
            case .text(let value): sqlite3_bind_text(statement, position, value, -1, SQLITE_TRANSIENT_DESTRUCTOR)
            case .blob(let value):
                value.withUnsafeBytes { sqlite3_bind_blob(statement, position, $0.baseAddress, Int32($0.count), SQLITE_TRANSIENT_DESTRUCTOR) }
            }
            guard status == SQLITE_OK else { throw error(status) }
        }
        while true {
            let status = sqlite3_step(statement)
            if status == SQLITE_DONE { return }
            guard status == SQLITE_ROW else { throw error(status) }
            try DatabaseError.wrapping { try row(Row(statement: statement)) }
        }
    }

    /// The rows of a query, each made into a value by `make`.
    public func query<T>(_ sql: String, _ parameters: [SQLValue] = [], _ make: (Row) throws -> T) throws(DatabaseError) -> [T] {
        var out: [T] = []
        try run(sql, parameters) { row in out.append(try make(row)) }
        return out
    }

    /// Rows changed by the last statement.
    public var changes: Int { Int(sqlite3_changes(handle)) }

    /// Runs `body` in a transaction on this connection (inside a `readNow` or `read` job).
    public func transactionNow<T>(_ body: () throws -> T) throws(DatabaseError) -> T {
        try execute("BEGIN IMMEDIATE")
        do {
            let value = try DatabaseError.wrapping(body)
            try execute("COMMIT")
            return value
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }

    /// Applies each plugin's steps that `harp_migrations` does not list yet, each in its own
    /// transaction with its record.
    func migrate(_ migrations: [Database.Migrations]) throws(DatabaseError) {
        try execute("CREATE TABLE IF NOT EXISTS harp_migrations (plugin TEXT NOT NULL, step INTEGER NOT NULL, PRIMARY KEY (plugin, step))")
        for set in migrations {
            let done = try query("SELECT COALESCE(MAX(step), 0) FROM harp_migrations WHERE plugin = ?", [.text(set.plugin)]) { $0.integer(0) }.first ?? 0
            for (index, sql) in set.steps.enumerated() where Int64(index + 1) > done {
                try transactionNow {
                    try execute(sql)
                    try run("INSERT INTO harp_migrations (plugin, step) VALUES (?, ?)", [.text(set.plugin), .integer(Int64(index + 1))])
                }
            }
        }
    }
}

/// A value bound to a statement.
public enum SQLValue: Sendable, Equatable {
    case null
    case integer(Int64)
    case real(Double)
    case text(String)
    case blob([UInt8])
}

/// One result row, valid only inside the `row` callback.
public struct Row {
    let statement: OpaquePointer

    public func integer(_ column: Int32) -> Int64 { sqlite3_column_int64(statement, column) }
    public func real(_ column: Int32) -> Double { sqlite3_column_double(statement, column) }
    public func isNull(_ column: Int32) -> Bool { sqlite3_column_type(statement, column) == SQLITE_NULL }
    public func text(_ column: Int32) -> String {
        guard let pointer = sqlite3_column_text(statement, column) else { return "" }
        return String(decoding: UnsafeBufferPointer(start: pointer, count: Int(sqlite3_column_bytes(statement, column))), as: UTF8.self)
    }
    public func blob(_ column: Int32) -> [UInt8] {
        let count = Int(sqlite3_column_bytes(statement, column))
        guard count > 0, let pointer = sqlite3_column_blob(statement, column) else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }
}

/// SQLite's SQLITE_TRANSIENT (a macro Swift cannot import): copy the bound bytes now.
let SQLITE_TRANSIENT_DESTRUCTOR = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
