import CShims
import CoreMetrics
import Glibc
import HarpKernel
import Logging
import Synchronization

/// The node's block exchange: its peer sessions, its downloads, and what it serves. Sessions
/// live on the loops; downloads are shared by all of them (see `Transfer`); the disk work a
/// download needs beyond chunk writes — syncing, recording, renaming — runs on a worker
/// thread of its own, in order.
final class Swarm: Sendable {
    let node: NodeID
    let index: FolderIndex
    let store: TransferStore
    let logger: Logger
    let statistics = PeerStatistics()
    private let indexer: WorkerThread
    private let disk = WorkerThread(name: "harp-p2p-disk")
    private let sessions = Mutex<[NodeID: PeerSession]>([:])
    private let transfers = Mutex<[ChunkID: Transfer]>([:])
    private let uploadLimit: TokenBucket?
    private let downloadLimit: TokenBucket?
    private let peerUploadLimits: [NodeID: TokenBucket]
    private let peerDownloadLimits: [NodeID: TokenBucket]
    private let activeGauge = Meter(label: "harp_p2p_transfers_active")
    /// Peers refused for a while after breaking the protocol.
    let penalties = PeerPenalties()
    /// Other plugins' channels and commands (registered before `start`, read-only after).
    private let extensions = Mutex<(channels: [any PeerChannel], commands: [String: NodeCommand])>(([], [:]))

    /// Where a chunk can be read: a file, the chunk's offset in it, its length.
    typealias ChunkLocation = (path: String, offset: Int, length: Int)

    /// Which connected peer the next get-whole goes to.
    private let wholeTurn = Atomic<Int>(0)
    /// Downloads that give up when they stall, and whether the task that checks them runs.
    private let stallWatches = Mutex<(watches: [ObjectIdentifier: (transfer: Transfer, watch: StallWatch)], sweeping: Bool)>(([:], false))

    /// When a fetch last failed for want of room (ns; logged once a minute).
    private let lastNoRoom = Mutex<UInt64>(0)
    /// Room every fetch leaves free, and how long an abandoned partial file is kept.
    let minFree: StorageConfiguration.DiskShare
    let partialTTL: Duration

    init(node: NodeID, configuration: StorageConfiguration, index: FolderIndex, indexer: WorkerThread, logger: Logger) {
        minFree = configuration.minFree
        partialTTL = configuration.partialTTL.duration
        self.node = node
        self.index = index
        self.indexer = indexer
        self.logger = logger
        store = TransferStore(database: index.database)
        uploadLimit = TokenBucket(bytesPerSecond: configuration.uploadRate)
        downloadLimit = TokenBucket(bytesPerSecond: configuration.downloadRate)
        // The same rate caps each peer too: one fast peer cannot take the whole global budget
        // while another waits (and with one peer, the two are the same).
        peerUploadLimits = Dictionary(configuration.peers.compactMap { peer in
            TokenBucket(bytesPerSecond: configuration.uploadRate).map { (peer.id, $0) }
        }, uniquingKeysWith: { first, _ in first })
        peerDownloadLimits = Dictionary(configuration.peers.compactMap { peer in
            TokenBucket(bytesPerSecond: configuration.downloadRate).map { (peer.id, $0) }
        }, uniquingKeysWith: { first, _ in first })
    }

    // MARK: Sessions

    func attach(_ session: PeerSession) {
        sessions.withLock { $0[session.peer] = session }
        for transfer in activeTransfers() { session.query(transfer) }
        for channel in extensions.withLock({ $0.channels }) { channel.peerConnected(PeerLink(peer: session.peer, session: session)) }
    }

    // MARK: Extensions

    func register(_ channel: any PeerChannel) {
        extensions.withLock { $0.channels.append(channel) }
    }

    func register(command name: String, _ handler: @escaping NodeCommand) {
        extensions.withLock { $0.commands[name] = handler }
    }

    var channelTypes: [UInt8: Int] {
        extensions.withLock { state in
            state.channels.reduce(into: [:]) { types, channel in types.merge(channel.channelTypes) { first, _ in first } }
        }
    }

    func channel(for type: UInt8) -> (any PeerChannel)? {
        extensions.withLock { $0.channels.first { $0.channelTypes[type] != nil } }
    }

    func command(_ name: String) -> NodeCommand? { extensions.withLock { $0.commands[name] } }

    func detach(_ session: PeerSession, reason: SessionEnd) {
        let removed = sessions.withLock { sessions -> Bool in
            guard sessions[session.peer] === session else { return false }
            sessions[session.peer] = nil
            return true
        }
        if removed {
            for transfer in activeTransfers() {
                transfer.peerGone(session.peer)
                wholeFailed(transfer, at: session.peer)
            }
            wakeAll()
            for channel in extensions.withLock({ $0.channels }) { channel.peerDisconnected(PeerLink(peer: session.peer, session: session)) }
        }
        logger.info("peer session ended \(session.peer): \(reason)")
    }

    var connected: [NodeID: PeerSession] { sessions.withLock { $0 } }

    /// Every session looks for requests to make (chunks went missing again, a download began).
    func wakeAll() {
        for session in sessions.withLock({ Array($0.values) }) { session.fillSoon() }
    }

    // MARK: Serving

    /// The manifest of `root`, or no-manifest when neither a download nor the folder knows it.
    func manifestMessage(for root: ChunkID) async -> PeerMessage {
        var manifest = transfer(root)?.manifest
        if manifest == nil {
            let index = self.index
            manifest = await indexer.run { try? index.manifest(of: root) }
        }
        return manifest.map { .manifest(root, $0) } ?? .noManifest(root)
    }

    /// A get-whole's answer: the manifest (or no-manifest) and, for content of one chunk, that
    /// chunk to push after it, with where it can be read when known — one trip to the index
    /// thread for what took three (manifest, have, locate).
    func wholeAnswer(for root: ChunkID) async -> (message: PeerMessage, push: ChunkID?, at: ChunkLocation?) {
        if let transfer = transfer(root), let manifest = transfer.manifest {
            let single = manifest.entries.count == 1 ? manifest.entries[0].id : nil
            return (.manifest(root, manifest), single, single.flatMap { transfer.location(of: $0) })
        }
        let index = self.index
        return await indexer.run {
            guard let manifest = try? index.manifest(of: root) else { return (.noManifest(root), nil, nil) }
            guard manifest.entries.count == 1 else { return (.manifest(root, manifest), nil, nil) }
            return (.manifest(root, manifest), manifest.entries[0].id, (try? index.locate(manifest.entries[0].id)) ?? nil)
        }
    }

    /// What we hold of `root`: every chunk for content in the folder, the verified ones of a
    /// download, or no-manifest when we hold none of it.
    func haveMessage(for root: ChunkID) async -> PeerMessage {
        if let transfer = transfer(root), let entries = transfer.haveEntries() { return .have(root, .entries(entries.bytes)) }
        let index = self.index
        let known = await indexer.run { (try? index.holds(root)) == true }
        return known ? .have(root, .all) : .noManifest(root)
    }

    /// Where a chunk can be read: a verified chunk of a download, else a file of the folder
    /// whose stamp still holds (`FolderIndex.locate`, off the loop: it may re-index).
    func locate(_ id: ChunkID) async -> (path: String, offset: Int, length: Int)? {
        for transfer in activeTransfers() {
            if let location = transfer.location(of: id) { return location }
        }
        let index = self.index
        return await indexer.run { try? index.locate(id) }
    }

    func uploadDelay(_ bytes: Int, to peer: NodeID) -> Duration {
        max(uploadLimit?.reserve(bytes) ?? .zero, peerUploadLimits[peer]?.reserve(bytes) ?? .zero)
    }

    func downloadDelay(_ bytes: Int, from peer: NodeID) -> Duration {
        max(downloadLimit?.reserve(bytes) ?? .zero, peerDownloadLimits[peer]?.reserve(bytes) ?? .zero)
    }

    // MARK: Downloads

    func transfer(_ root: ChunkID) -> Transfer? { transfers.withLock { $0[root] } }
    func activeTransfers() -> [Transfer] { transfers.withLock { Array($0.values) } }

    func transferWanting(_ id: ChunkID) -> Transfer? {
        activeTransfers().first { $0.want(id) != nil }
    }

    enum StartError: Error, CustomStringConvertible {
        case busy(String)
        case file(String)
        case noRoom(DiskShortage)
        case database(DatabaseError)

        var description: String {
            switch self {
            case .busy(let message), .file(let message): message
            case .noRoom(let shortage): shortage.description
            case .database(let error): "the node's database: \(error)"
            }
        }
    }

    /// Starts (or joins, or resumes) the download of `root` into `output`.
    /// `size`, when known (the metadata sync knows each version's), lets a file that may be
    /// one chunk be asked of one peer whole (get-whole): one round trip, no have exchange —
    /// `holder` if connected, else the peers in turn.
    func start(_ root: ChunkID, output: String, syncDirectory: Bool = true, size: Int? = nil, holder: NodeID? = nil) throws(StartError) -> Transfer {
        if let running = transfer(root) {
            guard running.output == output else { throw .busy("\(root) is already being fetched into \(running.output)") }
            return running
        }
        let saved: TransferStore.Saved?
        do {
            saved = try store.saved(root).flatMap { $0.output == output ? $0 : nil }
        } catch {
            throw .database(error)
        }
        return try begin(root, output: output, saved: saved, syncDirectory: syncDirectory, size: size, holder: holder)
    }

    private func begin(_ root: ChunkID, output: String, saved: TransferStore.Saved?, syncDirectory: Bool = true,
                       size: Int? = nil, holder: NodeID? = nil) throws(StartError) -> Transfer {
        let partial = Transfer.partialPath(for: output)
        // A saved download whose partial file vanished starts over.
        let resumable = saved != nil && access(partial, F_OK) == 0
        // A new partial file is created exclusively (a stale one of no record goes first), and
        // never through a link; only a recorded download reopens its own.
        if !resumable { unlink(partial) }
        let fd = open(partial, O_RDWR | O_CLOEXEC | O_NOFOLLOW | (resumable ? 0 : O_CREAT | O_EXCL), 0o600)
        guard fd >= 0 else { throw .file("cannot create \(partial): \(String(cString: strerror(errno)))") }
        let transfer = Transfer(root: root, output: output, fd: fd, syncsDirectory: syncDirectory)
        // Recorded once its manifest shows several chunks (`received`); a saved one already is.
        do {
            if saved != nil && !resumable { try store.forget(root) }
        } catch {
            Glibc.close(fd)
            throw .database(error)
        }
        transfer.recorded.store(resumable, ordering: .relaxed)
        if resumable, let manifest = saved?.manifest {
            transfer.setManifest(manifest, verified: saved!.verified)
            // A resumed download is checked for room like a new one.
            if let shortage = shortage(for: transfer, size: manifest.size) {
                Glibc.close(fd)
                throw .noRoom(shortage)
            }
            scanLocally(transfer)
        }
        let added = transfers.withLock { transfers -> Transfer in
            if let raced = transfers[root] { return raced }
            transfers[root] = transfer
            return transfer
        }
        guard added === transfer else {
            Glibc.close(fd)
            return added
        }
        activeGauge.increment()
        let resumed = transfer.snapshot()
        logger.info("fetching \(root) into \(output)", metadata: resumable && resumed.hasManifest
            ? ["resumed_bytes": "\(resumed.verifiedBytes)", "of": "\(resumed.size)"] : [:])
        if transfer.isComplete {
            flush(transfer, complete: true)
        } else {
            let connected = self.connected, sessions = Array(connected.values)
            if let size, size <= FastCDC.maximumSize, !sessions.isEmpty {
                // Taken in turn when the holder is away: small files spread over the peers.
                let whole = holder.flatMap { connected[$0] } ?? sessions[wholeTurn.wrappingAdd(1, ordering: .relaxed).oldValue % sessions.count]
                transfer.askWhole(from: whole.peer)
                whole.query(transfer, whole: true)
            } else {
                for session in sessions { session.query(transfer) }
                wakeAll()
            }
        }
        return transfer
    }

    /// `peer` cannot send `transfer` (no manifest, don't-have, a bad chunk, gone): if it was
    /// the one asked for the whole content, every other peer is asked now.
    func wholeFailed(_ transfer: Transfer, at peer: NodeID) {
        guard transfer.dropWhole(from: peer) else { return }
        for (other, session) in connected where other != peer { session.query(transfer) }
        wakeAll()
    }

    /// Downloads left unfinished by the last run go on (those abandoned too long are removed).
    func resumeSaved() {
        removeAbandoned()
        let saved: [TransferStore.Saved]
        do {
            saved = try store.all()
        } catch {
            return logger.error("cannot read unfinished downloads: \(error)")
        }
        for item in saved {
            do {
                _ = try begin(item.root, output: item.output, saved: item)
            } catch {
                logger.error("cannot resume fetching \(item.root) into \(item.output): \(error)")
            }
        }
    }

    /// A peer's manifest for a download: installed, saved, checked for room (a disk without
    /// it fails the download now, not at 99%), and every peer asked for chunks. No space is
    /// reserved ahead: a peer's manifest claiming a huge file must not take the disk; the
    /// file grows only as verified chunks land.
    func received(_ manifest: Manifest, of root: ChunkID, from session: PeerSession) {
        guard let transfer = transfer(root), transfer.setManifest(manifest) else { return }
        if let shortage = shortage(for: transfer, size: manifest.size) {
            // A full disk fails every fetch until there is room: one log line a minute.
            let now = EventLoop.preciseNanos()
            let quiet = lastNoRoom.withLock { last in
                defer { if now &- last >= 60_000_000_000 { last = now } }
                return last != 0 && now &- last < 60_000_000_000
            }
            return fail(transfer, .noRoom(shortage), quietly: quiet)
        }
        if manifest.entries.count > 1 {
            let store = self.store
            transfer.recorded.store(true, ordering: .relaxed)
            disk.enqueue {
                do {
                    try store.begin(transfer.root, output: transfer.output)
                    try store.saveManifest(manifest, for: transfer.root)
                } catch {
                    self.logger.error("cannot record the download of \(transfer.root): \(error)")
                }
            }
        }
        scanLocally(transfer)
    }

    /// Abandons `transfer` once it has stalled for `patience` (`StallWatch`). One task checks
    /// every watched download twice a second while any is watched: a task and a timer per
    /// download cost each small file received two task switches and a timer's cancellation.
    func giveUpWhenStalled(_ transfer: Transfer, patience: Duration) {
        let start = stallWatches.withLock { state -> Bool in
            state.watches[ObjectIdentifier(transfer)] = (transfer, StallWatch(patience: patience))
            defer { state.sweeping = true }
            return !state.sweeping
        }
        if start { Task { await self.sweepStalls() } }
    }

    private func sweepStalls() async {
        var more = true
        while more {
            try? await Task.sleep(for: .milliseconds(500))
            let stalled = stallWatches.withLock { state -> [(transfer: Transfer, patience: Duration)] in
                var stalled: [(transfer: Transfer, patience: Duration)] = []
                for (key, var entry) in state.watches {
                    if entry.transfer.outcome != nil {
                        state.watches[key] = nil
                    } else if entry.watch.stalled(entry.transfer.snapshot()) {
                        state.watches[key] = nil
                        stalled.append((entry.transfer, entry.watch.patience))
                    } else {
                        state.watches[key] = entry
                    }
                }
                more = !state.watches.isEmpty
                state.sweeping = more
                return stalled
            }
            for (transfer, patience) in stalled {
                abandon(transfer, "no connected peer sent any of \(transfer.root) for \(patience)")
            }
        }
    }

    /// Why `transfer` (a file of `size` bytes) does not fit: what it still needs plus
    /// `[storage] min_free` against what the file system has; nil when it fits.
    func shortage(for transfer: Transfer, size: Int) -> DiskShortage? {
        var info = statvfs()
        guard fstatvfs(transfer.fd, &info) == 0 else { return nil }
        let available = Int64(info.f_bavail) * Int64(info.f_frsize), total = Int64(info.f_blocks) * Int64(info.f_frsize)
        var allocated = stat()
        let held = fstat(transfer.fd, &allocated) == 0 ? Int64(allocated.st_blocks) * 512 : 0
        let needed = max(0, Int64(size) - held), keep = minFree.bytes(of: total)
        guard needed + keep > available else { return nil }
        return DiskShortage(needed: needed, keptFree: keep, available: available)
    }

    /// The partial files of the recorded downloads; nil when the records cannot be read.
    func resumablePartialFiles() -> Set<String>? {
        (try? store.all()).map { Set($0.map { Transfer.partialPath(for: $0.output) }) }
    }

    /// Partial downloads nobody resumed within `[storage] partial_ttl`: their files and records
    /// go (at start, before the others resume).
    func removeAbandoned() {
        let saved: [TransferStore.Saved]
        do { saved = try store.all() } catch { return }
        let now = time(nil)
        for item in saved {
            let partial = Transfer.partialPath(for: item.output)
            var info = stat()
            let age = lstat(partial, &info) == 0 ? Int64(now - info.st_mtim.tv_sec) : Int64.max
            guard age > Int64(partialTTL.components.seconds) else { continue }
            unlink(partial)
            try? store.forget(item.root)
            logger.info("removed an abandoned partial download of \(item.root) (untouched for \(partialTTL)): \(partial)")
        }
    }

    /// Copies the chunks the folder already holds (an older version of the file shares most
    /// of them: one byte inserted moves one chunk) before any is requested from a peer, then
    /// lets the sessions request the rest. On the disk worker: it reads and hashes files.
    private func scanLocally(_ transfer: Transfer) {
        let index = self.index
        disk.enqueue {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: FastCDC.maximumSize, alignment: 64)
            defer { buffer.deallocate() }
            var last = Transfer.Verified()
            var found: [Int] = []
            for slot in transfer.missingSlots() where transfer.outcome == nil {
                guard let location = try? index.locate(slot.id), location.length == slot.length else { continue }
                let fd = open(location.path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { continue }
                let read = pread(fd, buffer.baseAddress, slot.length, off_t(location.offset))
                Glibc.close(fd)
                let bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<slot.length])
                let digest = SHA256()
                digest.update(bytes)
                guard read == slot.length, digest.finalize() == slot.id.bytes else { continue }
                guard slot.offsets.allSatisfy({ pwrite(transfer.fd, bytes.baseAddress, slot.length, off_t($0)) == slot.length }) else {
                    self.fail(transfer, "cannot write \(transfer.partialPath): \(String(cString: strerror(errno)))")
                    break
                }
                last = transfer.verifiedLocally(slot.id)
                if let entry = last.entry { found.append(entry) }
            }
            transfer.finishLocalScan()
            for session in self.connected.values {
                for start in stride(from: 0, to: found.count, by: PeerLimits.updateIndices) {
                    session.announce(.haveUpdate(transfer.root, entries: Array(found[start..<min(start + PeerLimits.updateIndices, found.count)])), root: transfer.root)
                }
            }
            if last.complete { self.flush(transfer, complete: true) }
            self.wakeAll()
        }
    }

    /// A verified chunk was written: cancel its duplicates, tell interested peers, and make
    /// it durable when enough has landed.
    func delivered(_ id: ChunkID, to transfer: Transfer, from session: PeerSession) {
        let result = transfer.verified(id, from: session.peer)
        let all = connected
        for peer in result.cancels { all[peer]?.cancel(id) }
        if let entry = result.entry {
            for (peer, other) in all where peer != session.peer { other.announce(.haveUpdate(transfer.root, entries: [entry]), root: transfer.root) }
        }
        guard result.flush else { return }
        guard result.complete else { return flush(transfer, complete: false) }
        // The last chunk: the file is synced on the ring, beside the other downloads landing
        // now, before the disk worker renames it into place.
        let loop = session.loop
        loop.spawn {
            guard transfer.beginWrite() else { return }  // failed or finished meanwhile
            let synced = await loop.sync(transfer.fd, using: AsyncCompletion()) == 0
            transfer.endWrite()
            self.flush(transfer, complete: true, synced: synced)
        }
    }

    /// Tells the other peers what we just requested from `peer` (see `PeerFrameType.fetching`).
    func announceFetching(_ transfer: Transfer, entries: [Int], except peer: NodeID) {
        for (other, session) in connected where other != peer {
            session.announce(.fetching(transfer.root, entries: entries), root: transfer.root)
        }
    }

    /// Syncs the partial file, then records what it holds (so a kill loses at most what came
    /// since); when the download is complete, also renames it into place (`synced`: its bytes
    /// are on disk already).
    func flush(_ transfer: Transfer, complete: Bool, synced: Bool = false) {
        let store = self.store, index = self.index
        disk.enqueue {
            guard transfer.outcome == nil else { return }
            let slots = transfer.takeUnflushed()
            // Progress is recorded for a download that goes on; a complete one is synced once,
            // below, and its records go (a small file paid both).
            guard complete, let manifest = transfer.manifest else {
                guard fdatasync(transfer.fd) == 0 else {
                    return self.fail(transfer, "cannot sync \(transfer.partialPath): \(String(cString: strerror(errno)))")
                }
                do {
                    try store.record(slots, for: transfer.root)
                } catch {
                    self.logger.error("cannot record progress of \(transfer.root): \(error)")
                }
                return
            }
            transfer.quiesce()
            var info = stat()
            if fstat(transfer.fd, &info) == 0 { transfer.landedInode.store(Int64(info.st_ino), ordering: .relaxed) }
            guard synced || fsync(transfer.fd) == 0, transfer.closeFile() == 0 else {
                return self.fail(transfer, "cannot sync \(transfer.partialPath): \(String(cString: strerror(errno)))")
            }
            guard rename(transfer.partialPath, transfer.output) == 0 else {
                return self.fail(transfer, "cannot rename \(transfer.partialPath) to \(transfer.output): \(String(cString: strerror(errno)))")
            }
            if transfer.syncsDirectory { Self.syncDirectory(of: transfer.output) }
            if let relative = index.relative(transfer.output) {
                do { try index.record(relative, manifest: manifest) } catch { self.logger.error("cannot index \(transfer.output): \(error)") }
            }
            if transfer.recorded.load(ordering: .relaxed) { try? store.forget(transfer.root) }
            transfer.finish(.complete)
            self.remove(transfer)
            let snapshot = transfer.snapshot()
            let seconds = Double(EventLoop.preciseNanos() &- transfer.started) / 1e9
            let peers = snapshot.bytesByPeer.map { "\($0.key)=\($0.value)" }.sorted().joined(separator: " ")
            self.logger.info("fetched \(transfer.root) into \(transfer.output): \(manifest.size) bytes in \((seconds * 100).rounded() / 100) s",
                             metadata: ["from": "\(peers)"])
        }
    }

    /// Ends a download that cannot go on; its partial file and records stay for a retry.
    /// `quietly`: already said (a full disk fails every fetch of a pass; once a minute is enough).
    func fail(_ transfer: Transfer, _ reason: String, quietly: Bool = false) {
        fail(transfer, .failed(reason + Self.partialKept), quietly: quietly)
    }

    /// What every failed download says last (the CLI's `get` resumes it).
    static let partialKept = "; the partial file is kept: run the same get again to resume"

    func fail(_ transfer: Transfer, _ outcome: Transfer.Outcome, quietly: Bool = false) {
        guard transfer.outcome == nil else { return }
        transfer.finish(outcome)
        remove(transfer)
        if !quietly { logger.error("fetching \(transfer.root) failed: \(outcome.description)") }
        disk.enqueue { _ = transfer.closeFile() }
    }

    /// Stops a download nobody can serve now (the CLI gave up); a later get resumes it.
    func abandon(_ transfer: Transfer, _ reason: String) {
        fail(transfer, reason)
    }

    private func remove(_ transfer: Transfer) {
        let removed = transfers.withLock { transfers -> Bool in
            guard transfers[transfer.root] === transfer else { return false }
            transfers[transfer.root] = nil
            return true
        }
        if removed { activeGauge.decrement() }
    }

    private static func syncDirectory(of path: String) {
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        let fd = open(directory.isEmpty ? "/" : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        fsync(fd)
        Glibc.close(fd)
    }

    func stop() {
        disk.stop()
    }
}
