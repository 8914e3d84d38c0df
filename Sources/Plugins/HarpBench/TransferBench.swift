import BlockExchange
import CShims
import Foundation
import Glibc
import HarpKernel
import Synchronization

/// The nodes, files and timings of `harp bench transfer` (see `BenchTransfer`).
final class TransferBench: @unchecked Sendable {
    // @unchecked Sendable: driven from the command's thread; the HTTP origin's thread reads
    // only constants, and `processes` is guarded by `lock` (the staggered starter adds to it).
    let size: Int
    let peers: Int
    let rate: Int
    let staggered: Bool
    let root: String
    let showProgress: Bool
    private let lock = NSLock()
    private var processes: [Process] = []
    /// Seeders started by the staggered joiner thread: name → pid.
    private let joined = Mutex<[String: Int32]>([:])
    private let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path

    struct Node {
        let name: String
        let dir: String
        let id: NodeID
        let port: UInt16
        var folder: String { dir + "/folder" }
        var config: String { dir + "/harp.toml" }
    }

    init(size: Int, peers: Int, rate: Int, staggered: Bool, directory: String?, showProgress: Bool) throws {
        self.size = size
        self.peers = peers
        self.rate = rate
        self.staggered = staggered
        self.showProgress = showProgress
        if let directory {
            root = directory
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } else {
            var template = Array((NSTemporaryDirectory() + "harp-bench-XXXXXX").utf8CString)
            guard let made = mkdtemp(&template) else { throw BenchFailure("cannot make a directory in \(NSTemporaryDirectory())") }
            root = String(cString: made)
        }
    }

    struct BenchFailure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    struct Result {
        let json: [String: Any]
        let lines: [String]
    }

    func run() throws -> Result {
        // The nodes: origin, peers, downloader — the downloader last, so the others' folders
        // can share one copy of the file (hard links).
        let names = ["origin"] + (0..<peers).map { "peer\($0 + 1)" } + ["downloader"]
        var nodes: [Node] = []
        for name in names {
            let dir = root + "/" + name
            try FileManager.default.createDirectory(atPath: dir + "/folder", withIntermediateDirectories: true)
            let id: NodeID
            do { id = try NodeIdentity.create(in: dir) } catch { throw BenchFailure(error.description) }
            nodes.append(Node(name: name, dir: dir, id: id, port: try Self.freePort()))
        }
        let seeders = Array(nodes.dropLast()), downloader = nodes.last!
        try writeFile(seeders[0].folder + "/file")
        let expected = try Self.sha256(of: seeders[0].folder + "/file")
        // Index once; every seeder's copy is the same inode, so the same index holds for all.
        try indexOnce(seeders[0])
        for seeder in seeders.dropFirst() {
            try FileManager.default.linkItem(atPath: seeders[0].folder + "/file", toPath: seeder.folder + "/file")
            try FileManager.default.copyItem(atPath: seeders[0].dir + "/index.sqlite", toPath: seeder.dir + "/index.sqlite")
        }
        for node in nodes {
            let others = nodes.filter { $0.name != node.name }
            // The downloader gets a loop per core (`threads`): a laptop fetching a file has
            // nothing else to do, and one loop caps a receiver at ~0.5 GB/s here (decrypt,
            // hash, write: ~2 CPU s/GB). Seeders keep the default (half the cores).
            try """
                [harp]
                plugins = ["p2p"]
                log_level = "warning"
                threads = \(node.name == "downloader" ? ProcessInfo.processInfo.activeProcessorCount : 0)
                [storage]
                dir = "\(node.dir)"
                folder = "\(node.folder)"
                listen = "127.0.0.1:\(node.port)"
                peers = [\(others.map { "\"\($0.id)@127.0.0.1:\($0.port)\"" }.joined(separator: ", "))]
                upload_rate = \(node.name == "downloader" ? 0 : rate)
                """.write(toFile: node.config, atomically: true, encoding: .utf8)
        }

        // Each timed phase starts with nothing left to write back: the 2 GiB just made (and
        // the last phase's file) flushed during a phase halved its figure in some runs here
        // (single source 303–740 MB/s in three runs without this, 670–839 with it).
        sync()

        // (a) One source over HTTP through harp's proxy, at the same cap.
        let single = try singleSource(file: seeders[0].folder + "/file", out: root + "/single-source")
        unlink(root + "/single-source")
        sync()

        // (b) The swarm.
        let early = staggered ? [seeders[0], downloader] : nodes
        var pids: [String: Int32] = [:]
        for node in early { pids[node.name] = try start(node) }
        for node in early { try waitReady(node, seeding: node.name != "downloader") }
        try waitConnected(downloader, to: early.filter { $0.name != "downloader" })
        let client = ControlSocket.client(dir: downloader.dir)
        let cpuBefore = pids.mapValues(Self.cpuSeconds)
        let started = Date()
        if staggered {
            let joiners = Array(seeders.dropFirst())
            Thread.detachNewThread { [self] in
                for (number, node) in joiners.enumerated() {
                    let due = started.addingTimeInterval(Double(number + 1))
                    let wait = due.timeIntervalSinceNow
                    if wait > 0 { usleep(useconds_t(wait * 1e6)) }
                    if let pid = try? self.start(node) { self.joined.withLock { $0[node.name] = pid } }
                }
            }
        }
        var bar = ProgressBar()
        let out = downloader.folder + "/file"
        let answer: [String: Any]
        do {
            answer = try client.call(["cmd": "get", "root": try rootOf(seeders[0]), "out": out]) { line in
                guard self.showProgress, line["event"] as? String == "progress" else { return }
                bar.draw(bytes: line["bytes"] as? Int ?? 0, size: line["size"] as? Int ?? 0, rate: line["rate"] as? Int ?? 0,
                         peers: line["peers"] as? Int ?? 0)
            }
        } catch {
            bar.finish()
            throw BenchFailure("the swarm download failed: \(error)")
        }
        bar.finish()
        let swarmSeconds = Date().timeIntervalSince(started)
        for (name, pid) in joined.withLock({ $0 }) { pids[name] = pid }
        var cpuByNode: [String: Double] = [:]
        for (name, pid) in pids { cpuByNode[name] = Self.cpuSeconds(pid) - (cpuBefore[name] ?? 0) }
        let cpu = cpuByNode.values.reduce(0, +)
        let hashOK = try Self.sha256(of: out) == expected && single.hash == expected
        let byID = answer["bytes_by_peer"] as? [String: Int] ?? [:]
        var byPeer: [String: Int] = [:]
        for node in seeders { byPeer[node.name] = byID["\(node.id)"] ?? 0 }
        let ideal = Self.idealSpeedup(size: size, rate: rate, peers: peers, staggered: staggered)
        let speedup = single.seconds / swarmSeconds
        let gigabytes = Double(size) / 1e9
        let json: [String: Any] = [
            "size_bytes": size, "peers": peers, "peer_rate_bytes_per_s": rate, "join": staggered ? "staggered" : "all",
            "ideal_speedup": ideal.map { $0 as Any } ?? NSNull(),
            "single_source": ["seconds": single.seconds, "bytes_per_s": Double(size) / single.seconds],
            "swarm": ["seconds": swarmSeconds, "bytes_per_s": Double(size) / swarmSeconds, "bytes_by_peer": byPeer,
                      "cpu_seconds_by_node": cpuByNode],
            "speedup": speedup, "cpu_seconds_per_gb": cpu / gigabytes, "hash_ok": hashOK,
        ]
        let cap = rate > 0 ? "each capped at \(ProgressBar.bytes(rate))/s" : "uncapped"
        var lines = [
            "harp bench transfer: \(ProgressBar.bytes(size)), origin + \(peers) peer\(peers == 1 ? "" : "s"), \(cap), join \(staggered ? "staggered (one per second)" : "all at once")",
            String(format: "  single source (HTTP via harp)  %7.2f s  %8.1f MB/s", single.seconds, Double(size) / single.seconds / 1e6),
            String(format: "  swarm (TLS, verified chunks)   %7.2f s  %8.1f MB/s", swarmSeconds, Double(size) / swarmSeconds / 1e6),
            String(format: "  speedup %.2f×", speedup) + (ideal.map { String(format: " (ideal %.2f×)", $0) } ?? "")
                + String(format: "   CPU %.2f s/GB (all nodes)   hash %@", cpu / gigabytes, hashOK ? "ok" : "MISMATCH"),
        ]
        lines.append("  bytes by peer: " + seeders.map { "\($0.name) \(ProgressBar.bytes(byPeer[$0.name] ?? 0))" }.joined(separator: ", "))
        lines.append("  CPU seconds by node: " + nodes.map { String(format: "%@ %.2f", $0.name, cpuByNode[$0.name] ?? 0) }.joined(separator: ", "))
        return Result(json: json, lines: lines)
    }

    /// The ideal speedup from the caps and the join schedule: n capped sources at once are n×;
    /// staggered, source k joins at k seconds, so the swarm needs T with
    /// rate × Σ max(0, T − k) = size. None without a cap.
    static func idealSpeedup(size: Int, rate: Int, peers: Int, staggered: Bool) -> Double? {
        guard rate > 0 else { return nil }
        let single = Double(size) / Double(rate)
        guard staggered else { return Double(peers + 1) }
        // Σ_{k=0}^{m-1} (T − k) = size/rate with m sources active at T: solve piecewise.
        for active in 1...(peers + 1) {
            let t = (single + Double(active * (active - 1)) / 2) / Double(active)
            if active == peers + 1 || t <= Double(active) { return single / t }
        }
        return nil
    }

    // MARK: Pieces

    private func writeFile(_ path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw BenchFailure("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 64)
        defer { block.deallocate() }
        var left = size
        while left > 0 {
            let count = min(left, block.count)
            guard RAND_bytes(block.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(count)) == 1 else {
                throw BenchFailure("OpenSSL's RAND_bytes failed")
            }
            guard write(fd, block.baseAddress, count) == count else { throw BenchFailure("cannot write \(path): \(String(cString: strerror(errno)))") }
            left -= count
        }
    }

    private func indexOnce(_ node: Node) throws {
        let database = try Database(path: node.dir + "/index.sqlite", migrations: [FolderIndex.migrations], durability: .cache)
        let index = FolderIndex(folder: node.folder, database: database)
        do { try index.indexAll() } catch { throw BenchFailure(error.description) }
        try database.readNow { try $0.execute("PRAGMA wal_checkpoint(TRUNCATE)") }
    }

    private func rootOf(_ node: Node) throws -> String {
        let answer = try ControlSocket.client(dir: node.dir).call(["cmd": "add", "path": node.folder + "/file"])
        return answer["root"] as? String ?? ""
    }

    @discardableResult
    private func start(_ node: Node) throws -> Int32 {
        try spawn(["serve", "--config", node.config], log: node.dir + "/log")
    }

    private func spawn(_ arguments: [String], log: String) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let handle = FileHandle(forWritingAtPath: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        lock.withLock { processes.append(process) }
        return process.processIdentifier
    }

    private func waitReady(_ node: Node, seeding: Bool) throws {
        let client = ControlSocket.client(dir: node.dir)
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            if let status = try? client.call(["cmd": "status"]), !seeding || (status["files"] as? Int ?? 0) >= 1 { return }
            usleep(50_000)
        }
        throw BenchFailure("\(node.name) did not come up (log: \(node.dir)/log)")
    }

    private func waitConnected(_ node: Node, to others: [Node]) throws {
        let client = ControlSocket.client(dir: node.dir)
        let deadline = Date().addingTimeInterval(30)
        let wanted = Set(others.map { "\($0.id)" })
        while Date() < deadline {
            let peers = (try? client.call(["cmd": "status"]))?["peers"] as? [[String: Any]] ?? []
            let connected = Set(peers.filter { $0["connected"] as? Bool == true }.compactMap { $0["id"] as? String })
            if wanted.isSubset(of: connected) { return }
            usleep(50_000)
        }
        throw BenchFailure("\(node.name) did not connect to its peers (log: \(node.dir)/log)")
    }

    /// One HTTP download through harp's proxy from an origin paced at `rate`; the file is
    /// written, hashed and synced like the swarm's.
    private func singleSource(file: String, out: String) throws -> (seconds: Double, hash: String) {
        let origin = try HTTPFileOrigin(file: file, rate: rate)
        let proxyPort = try Self.freePort()
        let config = root + "/proxy.toml"
        try """
            [harp]
            plugins = ["http"]
            log_level = "warning"
            [http]
            listen = ["127.0.0.1:\(proxyPort)"]
            access_log = false
            [[http.routes]]
            path_prefix = "/"
            upstream = "http://127.0.0.1:\(origin.port)"
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let proxy = try spawn(["serve", "--config", config], log: root + "/proxy.log")
        defer { kill(proxy, SIGTERM) }
        var bar = ProgressBar()
        defer { bar.finish() }
        let deadline = Date().addingTimeInterval(20)
        while true {
            if let (seconds, hash) = try? HTTPFileOrigin.download(port: proxyPort, to: out, expected: size, progress: { bytes, rate in
                if self.showProgress { bar.draw(bytes: bytes, size: self.size, rate: rate, peers: 1) }
            }) {
                return (seconds, hash)
            }
            guard Date() < deadline else { throw BenchFailure("the HTTP download through harp failed (log: \(root)/proxy.log)") }
            usleep(100_000)
        }
    }

    func cleanUp(keep: Bool) {
        for process in lock.withLock({ processes }) where process.isRunning { process.terminate() }
        for process in lock.withLock({ processes }) { process.waitUntilExit() }
        if !keep { try? FileManager.default.removeItem(atPath: root) }
    }

    static func freePort() throws -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw BenchFailure("no free port") }
        return UInt16(bigEndian: address.sin_port)
    }

    static func sha256(of path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BenchFailure("cannot open \(path)") }
        defer { close(fd) }
        let digest = SHA256()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 64)
        defer { buffer.deallocate() }
        while true {
            let count = read(fd, buffer.baseAddress, buffer.count)
            guard count > 0 else { break }
            digest.update(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
        return digest.finalizeHex()
    }

    /// CPU seconds (user + system) a process has used, from /proc/PID/stat.
    static func cpuSeconds(_ pid: Int32) -> Double {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return 0 }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}
