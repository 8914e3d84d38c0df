import Foundation
import Glibc
import HarpKernel
import Logging

/// The node's commands on its `CommandSocket` (`[storage] dir/harp.sock`, mode 0600):
/// `harp storage add`, `get` and `status`, and what other plugins register (`swarm.command`).
/// Progress lines while a download runs, then a last line with `"done": true` or an `"error"`.
public final class ControlSocket: Sendable {
    let path: String
    private let socket: CommandSocket
    let swarm: Swarm
    let network: PeerNetwork
    let indexer: WorkerThread
    let configuration: StorageConfiguration
    let logger: Logger

    static let fileName = "harp.sock"

    init(swarm: Swarm, network: PeerNetwork, indexer: WorkerThread, configuration: StorageConfiguration, logger: Logger) {
        path = configuration.dir + "/" + Self.fileName
        socket = CommandSocket(path: path, key: "storage.dir", value: "\"\(configuration.dir)\"", inUse: "another node is running on it")
        self.swarm = swarm
        self.network = network
        self.indexer = indexer
        self.configuration = configuration
        self.logger = logger
    }

    /// The CLI's client for the node whose state directory is `dir`.
    public static func client(dir: String) -> CommandClient {
        CommandClient(path: dir + "/" + fileName, notRunning: "the node is not running; start it with `harp serve --config FILE`")
    }

    /// Binds the socket (`CommandSocket`: a live one means another node runs on this state
    /// directory, which is refused).
    func listen(on listeners: ListenerSet) throws(ConfigError) {
        try socket.listen(on: listeners) { connection in await self.serve(connection) }
    }

    func remove() { socket.remove() }

    private func serve(_ connection: CommandConnection) async {
        let socket = connection.socket
        switch connection.command {
        case "status":
            // What other plugins add (the crdt plugin: conflicts, the version store), as JSON text.
            var sections: String?
            if let handler = swarm.command(BlockExchangePlugin.statusSections) { sections = await Task.detached { await handler([:]) }.value }
            // The counts are an SQLite read: off the loop (loop 0 also runs frp and admin).
            let answer = await BlockingWork.run { [sections] in self.statusLine(sections: sections) }
            await connection.send(bytes: answer)
        case "add": await add(connection.request["path"] as? String ?? "", socket: socket)
        case "get": await get(root: connection.request["root"] as? String ?? "", output: connection.request["out"] as? String ?? "", socket: socket)
        case let command:
            guard let handler = swarm.command(command) else {
                let hint = ["ls", "history", "restore", "log"].contains(command) ? ": the crdt plugin does not run on this node" : ""
                return await connection.send(["error": "unknown command \(command)\(hint)"])
            }
            let fields = connection.fields
            // A detached task: the handler (the crdt plugin's node, an actor) must run on the
            // cooperative pool, not on this loop, which a task's executor preference would give it.
            let answer = await Task.detached { await handler(fields) }.value
            await connection.send(line: answer)
        }
    }

    private func send(_ object: [String: Any], to socket: SocketStream) async {
        guard var data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        data.append(0x0A)
        _ = await socket.write([UInt8](data), timeout: .seconds(10))
    }

    private func add(_ path: String, socket: SocketStream) async {
        let index = swarm.index
        guard let relative = index.relative(path) else {
            return await send(["error": "\(path) is not inside the folder \(index.folder)"], to: socket)
        }
        let result: Result<(ChunkID, Int), FolderIndex.Failure> = await indexer.run {
            Result { () throws(FolderIndex.Failure) -> (ChunkID, Int) in
                let root = try index.index(relative)
                return (root, try index.manifest(of: root)?.size ?? 0)
            }
        }
        switch result {
        case .success(let (root, size)): await send(["done": true, "root": root.description, "path": relative, "size": size], to: socket)
        case .failure(let failure): await send(["error": failure.description], to: socket)
        }
    }

    private func get(root text: String, output: String, socket: SocketStream) async {
        guard let root = ChunkID(hex: text) else {
            return await send(["error": "\(text) is not a content root (64 hex digits, as `harp storage add` prints)"], to: socket)
        }
        guard output.hasPrefix("/") else { return await send(["error": "the output path must be absolute"], to: socket) }
        let loop = socket.loop
        let timer = AsyncCompletion()
        // Peers connect within a moment of a start: give them a few seconds.
        var waited = 0
        while swarm.connected.isEmpty && waited < 50 {
            _ = await loop.sleep(for: .milliseconds(100), using: timer)
            waited += 1
        }
        guard !swarm.connected.isEmpty else {
            return await send(["error": "no peer is connected (\(configuration.peers.count) configured): check that they run and list this node in their [storage] peers"], to: socket)
        }
        // Starting reads SQLite and creates the partial file: off the loop.
        let swarm = self.swarm
        let started = await BlockingWork.run { Result { () throws(Swarm.StartError) in try swarm.start(root, output: output) } }
        let transfer: Transfer
        switch started {
        case .success(let running): transfer = running
        case .failure(let error): return await send(["error": error.description], to: socket)
        }
        var watch = StallWatch(patience: .seconds(15))
        var meter = RateMeter(), lastBytes = 0
        while true {
            let snapshot = transfer.snapshot()
            let now = EventLoop.preciseNanos()
            switch snapshot.outcome {
            case .complete:
                let seconds = Double(now &- transfer.started) / 1e9
                let peers = Dictionary(uniqueKeysWithValues: snapshot.bytesByPeer.map { ("\($0.key)", $0.value) })
                return await send(["done": true, "root": root.description, "out": output, "size": snapshot.size, "seconds": seconds,
                                   "bytes_by_peer": peers, "wasted_bytes": snapshot.wasted,
                                   "local_bytes": snapshot.localBytes], to: socket)
            case .failed(let reason):
                return await send(["error": reason], to: socket)
            case .noRoom(let shortage):
                return await send(["error": shortage.description + Swarm.partialKept], to: socket)
            case nil:
                break
            }
            let connected = Set(swarm.connected.keys)
            if !snapshot.hasManifest, !connected.isEmpty, connected.isSubset(of: transfer.peersWithoutManifest()) {
                swarm.abandon(transfer, "no connected peer has \(root) (asked \(connected.count))")
                continue
            }
            if snapshot.verifiedBytes != lastBytes {
                meter.add(snapshot.verifiedBytes - lastBytes, now: now)
                lastBytes = snapshot.verifiedBytes
            }
            if watch.stalled(snapshot, now: now) {
                let reason = snapshot.hasManifest
                    ? "\(snapshot.missingEverywhere) chunks of \(root) are on no connected peer"
                    : "no connected peer sent the manifest of \(root)"
                swarm.abandon(transfer, reason)
                continue
            }
            await send(["event": "progress", "bytes": snapshot.verifiedBytes, "size": snapshot.size, "peers": snapshot.holders,
                        "rate": Int(meter.current(now: now))], to: socket)
            _ = await loop.sleep(for: .milliseconds(200), using: timer)
        }
    }

    /// `status()` as the JSON line the command socket sends.
    private func statusLine(sections: String?) -> [UInt8] {
        var object = status()
        if let sections, let extra = (try? JSONSerialization.jsonObject(with: Data(sections.utf8))) as? [String: Any] {
            object.merge(extra) { current, _ in current }
        }
        guard var data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return [] }
        data.append(0x0A)
        return [UInt8](data)
    }

    private func status() -> [String: Any] {
        let statistics = swarm.statistics.snapshot()
        let connected = swarm.connected
        let now = EventLoop.preciseNanos()
        let peers: [[String: Any]] = configuration.peers.map { peer in
            let stats = statistics[peer.id] ?? PeerStatistics.Peer()
            return ["id": "\(peer.id)", "address": "\(peer.address)", "connected": connected[peer.id] != nil,
                    "bytes_sent": stats.bytesSent, "bytes_received": stats.bytesReceived,
                    "chunks_sent": stats.chunksSent, "chunks_received": stats.chunksReceived, "bad_chunks": stats.badChunks,
                    "send_rate": Int(stats.sending.current(now: now)), "receive_rate": Int(stats.receivingRate.current(now: now))]
        }
        let transfers: [[String: Any]] = swarm.activeTransfers().map { transfer in
            let snapshot = transfer.snapshot()
            return ["root": transfer.root.description, "out": transfer.output, "size": snapshot.size, "bytes": snapshot.verifiedBytes,
                    "chunks": snapshot.chunks, "verified_chunks": snapshot.verifiedChunks, "peers": snapshot.holders]
        }
        let counts = try? swarm.index.counts()
        return ["node": "\(swarm.node)", "folder": swarm.index.folder, "files": counts?.files ?? 0, "chunks": counts?.chunks ?? 0,
                "peers": peers, "transfers": transfers]
    }
}
