import BlockExchange
import Foundation
import HarpKernel
import Logging

/// `crdt`: P2P storage mode's metadata (docs/protocols/p2p.md, "Metadata"). Keeps
/// `[storage] folder` in sync with the peers of the `p2p` plugin without a coordinator: local
/// changes become operations (HLC-stamped moves and versions), operations travel in the p2p
/// sessions (delta anti-entropy), and the replicated tree — moves never duplicate or lose a
/// subtree, concurrent edits are one path with a linear history — is materialized in the
/// folder, content fetched by the p2p plugin.
public final class MetadataSyncPlugin: Plugin {
    public static let name = "crdt"
    public static let summary = "P2P storage mode's metadata sync: a replicated folder tree with per-file histories, no conflict copies"
    public static let dependencies = ["p2p"]
    public static var defaultConfiguration: MetadataConfiguration { MetadataConfiguration() }

    let node: MetadataNode

    public init(configuration: MetadataConfiguration, context: PluginContext) throws {
        guard let p2p = context.dependency(BlockExchangePlugin.self) else {
            throw ConfigError.invalid(key: "harp.plugins", value: "crdt", reason: "the crdt plugin needs the p2p plugin running")
        }
        let storage = p2p.storageConfiguration
        let log: OperationLog
        let key: Ed25519.PrivateKey
        do {
            key = try Ed25519.PrivateKey(pemFile: storage.dir + "/" + NodeIdentity.keyFile)
        } catch {
            throw ConfigError.invalid(key: "storage.dir", value: "\"\(storage.dir)\"", reason: "the node's key: \(error)")
        }
        do {
            log = try OperationLog(path: storage.dir + "/metadata.sqlite")
            node = try MetadataNode(folder: storage.folder, stateDirectory: storage.dir, node: p2p.node, key: key,
                                    configuration: configuration, log: log, p2p: p2p, logger: context.logger)
        } catch {
            throw ConfigError.invalid(key: "storage.dir", value: "\"\(storage.dir)\"", reason: "the metadata log: \(error)")
        }
        let node = self.node
        p2p.register(channel: SyncChannel(node: node))
        p2p.register(command: "ls") { request in
            MetadataCommands.list(await node.view(), path: request["path"] ?? "", deleted: request["deleted"] == "1")
        }
        p2p.register(command: "history") { request in MetadataCommands.history(await node.view(), path: request["path"] ?? "") }
        p2p.register(command: "restore") { request in
            await MetadataCommands.restore(node, path: request["path"] ?? "", version: Int(request["version"] ?? "") ?? 0)
        }
        p2p.register(command: BlockExchangePlugin.statusSections) { _ in await MetadataCommands.status(node, configuration: configuration) }
        p2p.register(command: "log") { request in
            let count = max(1, min(Int(request["count"] ?? "") ?? 50, 1000))
            return MetadataCommands.log(await node.recentOperations(count), kept: await node.operationsKept)
        }
    }

    /// `harp storage ls/history/log` on a stopped node: the same answers, from its metadata
    /// log opened read only.
    public static func prepareCommands() {
        StoppedNodeCommands.register("ls") { directory, request in
            answer(directory) { MetadataCommands.list(FolderView(tree: $0.tree, histories: $0.histories), path: request["path"] ?? "",
                                                      deleted: request["deleted"] == "1") }
        }
        StoppedNodeCommands.register("history") { directory, request in
            answer(directory) { MetadataCommands.history(FolderView(tree: $0.tree, histories: $0.histories), path: request["path"] ?? "") }
        }
        StoppedNodeCommands.register("log") { directory, request in
            let count = max(1, min(Int(request["count"] ?? "") ?? 50, 1000))
            return answer(directory) { MetadataCommands.log(MetadataNode.newest(count, of: $0), kept: $0.operationCount) }
        }
    }

    /// `body`'s answer for the replica a stopped node's state directory holds.
    private static func answer(_ directory: String, _ body: (Replica) -> String) -> String {
        do {
            let node = try NodeIdentity.load(from: directory)
            let loaded = try OperationLog(readingOnly: directory + "/metadata.sqlite").load()
            return body(Replica(node: node, wall: loaded.wall, counter: loaded.counter, settled: loaded.settled, operations: loaded.operations))
        } catch {
            return MetadataCommands.json(["error": "the node is not running, and its metadata log cannot be read: \(error)"])
        }
    }

    public func start() async throws {
        await node.start()
    }

    public func stopAccepting() async {
        await node.stop()
    }

    public var endpoints: [String] { ["metadata sync of the p2p folder (HLC moves and versions)"] }
}

/// The answers of `harp storage ls/history/restore/log`, as JSON text.
enum MetadataCommands {
    static func json(_ object: [String: Any]) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return #"{"error":"encoding"}"# }
        return String(decoding: data, as: UTF8.self)
    }

    /// Conflicts are listed for this long after they were decided.
    static let conflictsListed: UInt64 = 7 * 86_400_000

    /// What `harp storage status` adds for the metadata: the recent conflicts, the content
    /// still to fetch, and what the version store holds and its retention removed.
    static func status(_ node: MetadataNode, configuration: MetadataConfiguration) async -> String {
        let since = MetadataNode.nowMilliseconds > conflictsListed ? MetadataNode.nowMilliseconds - conflictsListed : 0
        let window = UInt64(configuration.maxClockSkew.duration.components.seconds) * 1000
        let conflicts = Conflict.recent(in: await node.view(), since: since, window: window)
        let store = await node.versionStore, fetching = await node.fetchState
        return json(["conflicts": conflicts.map(\.json),
                     "content": ["pending_files": fetching.pending, "pending_bytes": fetching.pendingBytes, "in_flight": fetching.inFlight,
                                 "in_flight_bytes": fetching.inFlightBytes, "failed": fetching.failures.count,
                                 // The first 20 (the count says how many in all).
                                 "failures": fetching.failures.prefix(20).map { ["path": $0.path, "reason": $0.reason, "retry_in_seconds": $0.retryIn] },
                                 "files_per_second": fetching.filesPerSecond, "bytes_per_second": fetching.bytesPerSecond],
                     "version_store": ["files": store.files, "bytes": store.bytes, "pruned_files": store.prunedFiles,
                                       "pruned_bytes": store.prunedBytes, "keep_versions": configuration.keepVersions,
                                       "keep_versions_for": configuration.keepVersionsFor.description,
                                       "version_store_max": configuration.versionStoreMax.description]])
    }

    static func clean(_ path: String) -> String {
        path.split(separator: "/").filter { !$0.isEmpty && $0 != "." }.joined(separator: "/")
    }

    /// A directory's entries; with `deleted`, the deleted ones that were in it (the directory
    /// may be deleted itself).
    static func list(_ view: FolderView, path: String, deleted: Bool) -> String {
        let directory = clean(path)
        let known = view.entries[directory]?.isDirectory == true || (deleted && view.deleted[directory]?.isDirectory == true)
        if !directory.isEmpty, !known {
            return json(["error": "\(directory) is not a directory in the folder\(deleted ? ", nor a deleted one" : "")"])
        }
        let prefix = directory.isEmpty ? "" : directory + "/"
        let source = deleted ? view.deleted : view.entries
        let children = source.values.filter { $0.path.hasPrefix(prefix) && !$0.path.dropFirst(prefix.count).contains("/") }
        let entries: [[String: Any]] = children.sorted { $0.path < $1.path }.map { entry in
            var item: [String: Any] = ["name": String(entry.path.dropFirst(prefix.count)), "type": entry.isDirectory ? "dir" : "file"]
            if let head = entry.head {
                item["size"] = head.size
                item["root"] = head.root.description
            }
            if deleted { item["deleted"] = true }
            return item
        }
        return json(["done": true, "path": directory, "entries": entries])
    }

    static func history(_ view: FolderView, path: String) -> String {
        let target = clean(path)
        guard let entry = view.entries[target] ?? view.deleted[target], !entry.isDirectory else {
            return json(["error": "\(target) is not a file in the folder, nor a deleted one"])
        }
        let versions: [[String: Any]] = entry.history.map { item in
            ["n": item.number, "timestamp": "\(item.version.timestamp.wall).\(item.version.timestamp.counter)",
             "node": "\(item.version.timestamp.node)", "size": item.version.size, "root": item.version.root.description,
             "concurrent": item.concurrent, "head": item.head]
        }
        return json(["done": true, "path": target, "versions": versions, "deleted": view.entries[target] == nil])
    }

    static func restore(_ node: MetadataNode, path: String, version: Int) async -> String {
        let target = clean(path)
        if let failure = await node.restore(target, version: version) { return json(["error": failure]) }
        return json(["done": true, "path": target, "restored": version])
    }

    static func log(_ recent: [LoggedOperation], kept: Int) -> String {
        let operations: [[String: Any]] = recent.map { logged in
            var item: [String: Any] = ["origin": "\(logged.origin)", "sequence": logged.sequence,
                                       "timestamp": "\(logged.operation.timestamp.wall).\(logged.operation.timestamp.counter)",
                                       "item": logged.operation.item.description]
            switch logged.operation {
            case .move(let move):
                item["op"] = move.parent == .trash ? "delete" : "move"
                item["parent"] = move.parent.description
                item["name"] = move.name
            case .version(let version):
                item["op"] = "version"
                item["root"] = version.root.description
                item["size"] = version.size
            }
            return item
        }
        return json(["done": true, "operations": operations, "operations_kept": kept])
    }
}
