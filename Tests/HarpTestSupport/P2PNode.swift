import Foundation
import Glibc

/// A P2P node for swarm tests: an identity and folder in a temporary directory, its config
/// on disk (the CLI needs the file), and the `harp serve` process while it runs.
public final class P2PNode: @unchecked Sendable {
    // @unchecked Sendable: used from one test's thread.
    public let dir: String
    public let id: String
    public let port: UInt16
    public var process: HarpProcess?
    public var folder: String { dir + "/folder" }
    public var configPath: String { dir + "/harp.toml" }
    /// Config appended to `[storage]` (another plugin's section), and the plugins to run.
    public var extraConfig = ""
    /// Lines added to `[harp]` (`threads = 1`).
    public var harpSettings = ""
    public var plugins = ["p2p"]

    public init() throws {
        dir = NSTemporaryDirectory() + "harp-node-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir + "/folder", withIntermediateDirectories: true)
        id = try HarpProcess.run(["storage", "init", "--dir", dir]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        port = freePort()
    }

    /// Writes the config: these peers, these caps (bytes/s, 0 = none), and with `admin` the
    /// metrics endpoint on that port.
    public func configure(peers: [P2PNode], uploadRate: Int = 0, downloadRate: Int = 0, admin: UInt16? = nil) throws {
        let names = plugins + (admin == nil ? [] : ["admin"])
        try """
            [harp]
            plugins = [\(names.map { "\"\($0)\"" }.joined(separator: ", "))]
            log_level = "info"
            \(harpSettings)
            \(admin.map { "[admin]\nlisten = \"127.0.0.1:\($0)\"" } ?? "")
            [storage]
            dir = "\(dir)"
            folder = "\(folder)"
            listen = "127.0.0.1:\(port)"
            peers = [\(peers.map { "\"\($0.id)@127.0.0.1:\($0.port)\"" }.joined(separator: ", "))]
            upload_rate = \(uploadRate)
            download_rate = \(downloadRate)
            \(extraConfig)
            """.write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    /// Starts the node; waits until it is ready and its folder is indexed.
    public func start() throws {
        if let process { earlierLogs += process.stderr }
        let harp = try HarpProcess(["serve", "--config", configPath])
        process = harp
        try harp.waitForOutput("harp: ready")
        try harp.waitForOutput("folder indexed", timeout: 120)
    }

    public func waitConnected(to others: [P2PNode], timeout: Double = 20) throws {
        for other in others { try process!.waitForOutput("peer connected \(other.id)", timeout: timeout) }
    }

    public func kill() throws {
        try process?.stop(signal: SIGKILL)
    }

    public func stop() throws {
        try process?.stop()
    }

    /// What the node's earlier runs logged (a restart starts a new process).
    private var earlierLogs = ""

    /// What every run of the node logged.
    public var log: String { earlierLogs + (process?.stderr ?? "") }

    /// `harp storage ARGS --config … --json` → the JSON object it prints (or its error).
    public func storage(_ arguments: [String]) throws -> [String: Any] {
        let result = try HarpProcess.run(["storage"] + arguments + ["--config", configPath, "--json"])
        guard result.status == 0 else { throw TestFailure("harp storage \(arguments.joined(separator: " ")): \(result.stderr)") }
        guard let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] else {
            throw TestFailure("not JSON: \(result.stdout)")
        }
        return object
    }

    public func add(_ name: String) throws -> String {
        try storage(["add", folder + "/" + name])["root"] as! String
    }

    /// `harp storage get` in the background.
    public func startGet(_ root: String, into out: String) throws -> HarpProcess {
        try HarpProcess(["storage", "get", root, "--out", out, "--config", configPath, "--json"])
    }

    /// Waits for a background get; its JSON answer.
    public static func answer(of get: HarpProcess, timeout: Double = 120) throws -> [String: Any] {
        let status = try get.waitForExit(timeout: timeout)
        guard status == 0, let object = try JSONSerialization.jsonObject(with: Data(get.stdout.utf8)) as? [String: Any] else {
            throw TestFailure("get failed (\(status)): \(get.stderr)")
        }
        return object
    }

    /// Bytes verified so far of the download in progress (0 when none is running).
    public func downloadedBytes() -> Int {
        guard let status = try? storage(["status"]), let transfers = status["transfers"] as? [[String: Any]] else { return 0 }
        return transfers.first?["bytes"] as? Int ?? 0
    }

    /// This node's counters for `peer` from `harp storage status`.
    public func counters(for peer: P2PNode) throws -> [String: Any] {
        let peers = try storage(["status"])["peers"] as? [[String: Any]] ?? []
        return peers.first { $0["id"] as? String == peer.id } ?? [:]
    }

    public func remove() {
        if process?.process.isRunning == true { try? kill() }
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// Every node lists every other.
    public static func mesh(_ nodes: [P2PNode], uploadRates: [Int]? = nil) throws {
        for (index, node) in nodes.enumerated() {
            try node.configure(peers: nodes.filter { $0 !== node }, uploadRate: uploadRates?[index] ?? 0)
        }
    }

    /// A file of `size` random bytes.
    public static func makeFile(_ path: String, size: Int) throws {
        let result = try shell("head -c \(size) /dev/urandom > '\(path)'")
        guard result.status == 0 else { throw TestFailure("cannot create \(path)") }
    }

    public static func sha256(_ path: String) throws -> String {
        try shell("sha256sum '\(path)' | cut -d' ' -f1").output
    }
}
