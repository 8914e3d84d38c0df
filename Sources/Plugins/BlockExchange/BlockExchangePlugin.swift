import CShims
import ArgumentParser
import Glibc
import HarpKernel
import Logging
import Synchronization

/// `p2p`: a P2P storage node (docs/protocols/p2p.md) — its identity, the content index of its
/// synced folder (FastCDC chunks, SHA-256 IDs, manifests and roots, in SQLite), peer
/// connections (pinned-key TLS 1.3, admission by node ID, Hello), the block exchange over them
/// (`Swarm`, `PeerSession`, `Transfer`) and the command socket `harp storage` talks to.
public final class BlockExchangePlugin: Plugin {
    public static let name = "p2p"
    public static let section = "storage"
    public static let summary = "P2P storage node: verified multi-peer chunk transfer between authenticated peers, folder content index"
    public static var defaultConfiguration: StorageConfiguration { StorageConfiguration() }
    public static let commands: [any ParsableCommand.Type] = [StorageCommand.self]

    let configuration: StorageConfiguration
    let context: PluginContext
    public let node: NodeID
    let index: FolderIndex
    let network: PeerNetwork
    let swarm: Swarm
    private let control: ControlSocket
    private let listeners: ListenerSet
    /// Indexing runs here: a large folder takes a while, and it is all file reads.
    private let indexer = WorkerThread(name: "harp-p2p-index")

    public init(configuration: StorageConfiguration, context: PluginContext) throws {
        self.configuration = configuration
        self.context = context
        Self.restrict(configuration.dir)
        do {
            node = try NodeIdentity.load(from: configuration.dir)
            // Several nodes on one terminal (the README's walkthrough) tell their lines apart.
            LogWriter.standardError.setTag(String(node.description.prefix(9)))
        } catch {
            throw ConfigError.invalid(key: "storage.dir", value: "\"\(configuration.dir)\"", reason: error.description)
        }
        let database: Database
        do {
            database = try Database(path: configuration.dir + "/index.sqlite", migrations: [FolderIndex.migrations], durability: .cache)
        } catch {
            throw ConfigError.invalid(key: "storage.dir", value: "\"\(configuration.dir)\"", reason: "\(error)")
        }
        index = FolderIndex(folder: configuration.folder, database: database)
        swarm = Swarm(node: node, configuration: configuration, index: index, indexer: indexer, logger: context.logger)
        do {
            network = try PeerNetwork(node: node, configuration: configuration, swarm: swarm, logger: context.logger)
        } catch {
            throw ConfigError.invalid(key: "storage.dir", value: "\"\(configuration.dir)\"", reason: "the node's certificate or key: \(error)")
        }
        listeners = ListenerSet(loops: context.loops, logger: context.logger)
        control = ControlSocket(swarm: swarm, network: network, indexer: indexer, configuration: configuration, logger: context.logger)
    }

    /// Listens for peers, dials those it should (see `PeerNetwork`), and indexes the folder on
    /// a thread of its own (a large folder takes a while; the loops go on serving meanwhile).
    public func start() async throws {
        let network = self.network
        try control.listen(on: listeners)
        try listeners.listen(on: configuration.listen, key: context.origins.describe("storage.listen")) { socket in
            await network.accept(socket)
        }
        // Dialers spread over the loops, as accepted connections are.
        for (number, peer) in configuration.peers.filter({ $0.id != node }).enumerated() {
            let loop = context.loops[number % context.loops.count]
            loop.serveConnection { await network.maintain(peer, on: loop) }
        }
        let index = self.index
        let logger = context.logger
        indexer.enqueue {
            do {
                let files = try index.indexAll()
                let counts = try index.counts()
                logger.info("folder indexed", metadata: ["files": "\(files)", "chunks": "\(counts.chunks)", "folder": "\(index.folder)"])
            } catch {
                logger.error("indexing the folder failed", metadata: ["error": "\(error)"])
            }
        }
        swarm.resumeSaved()
    }

    public var listenAddresses: [ConfiguredAddress] { [ConfiguredAddress(key: "storage.listen", address: configuration.listen)] }

    public func stopAccepting() async {
        indexer.stop()
        network.stop()
        await listeners.stop()
        control.remove()
        swarm.stop()
    }

    /// Adds another plugin's frames to the peer sessions (call before `start`).
    public func register(channel: any PeerChannel) {
        swarm.register(channel)
    }

    /// The command another plugin registers to add fields to `harp storage status`: it
    /// answers a JSON object, merged into the status.
    public static let statusSections = "status-sections"

    /// Adds a command to the node's socket (call before `start`).
    public func register(command name: String, _ handler: @escaping NodeCommand) {
        swarm.register(command: name, handler)
    }

    /// The `[storage]` section (the metadata sync reads its folder and state directory).
    public var storageConfiguration: StorageConfiguration { configuration }

    /// The folder's content index (another plugin indexes the files it versions through it).
    public var folderIndex: FolderIndex { index }

    /// The partial files of the recorded downloads, which resume after a restart (only those
    /// of several chunks are recorded; see `Transfer.recorded`); nil when that cannot be read.
    public func resumablePartialFiles() -> Set<String>? { swarm.resumablePartialFiles() }

    public enum FetchOutcome: Sendable {
        /// In place; the file's inode as it landed.
        case done(inode: Int64)
        /// The file system lacks room (every fetch fails so until there is room).
        case noRoom(DiskShortage)
        case failed(String)
    }

    /// Fetches `root` into `output` from the peers (the metadata sync's materialization).
    /// Fails also when for `patience` nothing arrived and nothing was asked for (no
    /// connected peer has it now; the partial file is kept). The file is synced; its
    /// directory too unless `syncDirectory` is false (the caller moves it on and syncs there).
    /// `size`, when known, lets a small file come whole from one peer in one round trip —
    /// `holder` when it is connected (the node that wrote the version has its bytes).
    public func fetch(_ root: ChunkID, into output: String, size: Int? = nil, holder: NodeID? = nil, patience: Duration = .seconds(10),
                      syncDirectory: Bool = true) async -> FetchOutcome {
        let transfer: Transfer
        do {
            transfer = try swarm.start(root, output: output, syncDirectory: syncDirectory, size: size, holder: holder)
        } catch .noRoom(let shortage) {
            return .noRoom(shortage)
        } catch {
            return .failed(error.description)
        }
        swarm.giveUpWhenStalled(transfer, patience: patience)
        switch await transfer.ended() {
        case .complete: return .done(inode: transfer.landedInode.load(ordering: .relaxed))
        case .noRoom(let shortage): return .noRoom(shortage)
        case .failed(let reason): return .failed(reason)
        }
    }

    public var endpoints: [String] {
        ["node \(node)", "folder \(configuration.folder)"] + listeners.boundAddresses.map {
            if case .unix(let path) = $0 { return "commands on \(path)" }
            return "peers on \($0) (TLS 1.3, node IDs)"
        }
    }

    /// The state directory is the node's own: 0700, and every file directly in it 0600 (the
    /// key, the databases — SQLite gives its WAL the database's mode), whatever a earlier
    /// version or a careless umask made them. Subdirectories (a folder kept inside it) keep
    /// their modes.
    static func restrict(_ directory: String) {
        chmod(directory, 0o700)
        for name in ["index.sqlite", "metadata.sqlite"] where access(directory + "/" + name, F_OK) != 0 {
            let fd = open(directory + "/" + name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd >= 0 { close(fd) }
        }
        guard let listing = opendir(directory) else { return }
        defer { closedir(listing) }
        while let entry = readdir(listing) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            var info = stat()
            guard lstat(directory + "/" + name, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { continue }
            chmod(directory + "/" + name, 0o600)
        }
    }
}
