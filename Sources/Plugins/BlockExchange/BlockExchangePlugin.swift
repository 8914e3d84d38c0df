import ArgumentParser
import Dispatch
import HarpKernel
import Logging

/// `p2p`: the node's identity and the content index of its synced folder (FastCDC chunks,
/// SHA-256 IDs, manifests and roots, in SQLite) — the base of peer-to-peer block exchange
/// (docs/protocols/p2p.md). Peer connections and swarm transfer are not built yet.
public final class BlockExchangePlugin: Plugin {
    public static let name = "p2p"
    public static let section = "storage"
    public static let summary = "P2P storage node: identity and content index of the synced folder (peer transfer not built yet)"
    public static var defaultConfiguration: StorageConfiguration { StorageConfiguration() }
    public static let commands: [any ParsableCommand.Type] = [StorageCommand.self]

    let configuration: StorageConfiguration
    let context: PluginContext
    public let node: NodeID
    let index: FolderIndex

    public init(configuration: StorageConfiguration, context: PluginContext) throws {
        self.configuration = configuration
        self.context = context
        do {
            node = try NodeIdentity.load(from: configuration.dir)
        } catch {
            throw ConfigError.invalid(key: "storage.dir", value: "\"\(configuration.dir)\"", reason: error.description)
        }
        let database: Database
        do {
            database = try Database(path: configuration.dir + "/index.sqlite", migrations: [FolderIndex.migrations])
        } catch {
            throw ConfigError.invalid(key: "storage.dir", value: "\"\(configuration.dir)\"", reason: "\(error)")
        }
        index = FolderIndex(folder: configuration.folder, database: database)
    }

    /// The folder is indexed at start, on a thread of its own (a large folder takes a while;
    /// the loops go on serving meanwhile).
    public func start() async throws {
        let index = self.index
        let logger = context.logger
        DispatchQueue.global().async {
            do {
                let files = try index.indexAll()
                let counts = try index.counts()
                logger.info("folder indexed", metadata: ["files": "\(files)", "chunks": "\(counts.chunks)", "folder": "\(index.folder)"])
            } catch {
                logger.error("indexing the folder failed", metadata: ["error": "\(error)"])
            }
        }
    }

    public var endpoints: [String] {
        ["node \(node)", "folder \(configuration.folder)"]
    }
}
