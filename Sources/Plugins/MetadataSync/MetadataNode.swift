import BlockExchange
import CoreMetrics
import Foundation
import Glibc
import HarpKernel
import Logging

/// One node's metadata sync: the replica, the folder it mirrors, and its peers. An actor: peer
/// messages, scans and materialization take turns; the folder work itself (`work`) runs one
/// pass at a time — scan the folder for local changes, then make the folder match the view —
/// so the node never mistakes a file it is writing for a change of the user's.
actor MetadataNode {
    let folder: String
    let stateDirectory: String
    let configuration: MetadataConfiguration
    let log: OperationLog
    let p2p: BlockExchangePlugin
    let logger: Logger
    /// The node's identity key: it signs the operations this node makes (`OperationChain`).
    let key: Ed25519.PrivateKey
    private var replica: Replica
    /// What each synced path is on disk (relative paths), as last seen or written.
    private var paths: [String: PathState]
    private var links: [NodeID: PeerLink] = [:]
    /// Every replica of the folder this node knows of, and their vectors (kept while a peer is
    /// away: an old one only settles less).
    private var reports: ReplicaReports
    /// The vector as far as the log on disk has it — what peers are told, since they may
    /// drop moves on the strength of it. Each append, once written, makes the vector as it
    /// stood right after its operations durable (appends reach the disk in order). After a
    /// failed append it stops for good: what that append held is not on disk.
    private var durableVector: [NodeID: UInt64]
    private var appendFailed = false
    /// Set when recording a settlement failed: memory has dropped moves the disk still holds,
    /// so settling more would leave a restart replaying old moves over newer settled ones.
    private var settlingFailed = false
    /// Peers sent this node's settled state (they lacked settled moves), once per connection.
    private var sentSettled: Set<NodeID> = []
    private var working = false
    /// `stop()` waiting for the pass in progress to end.
    private var passEndWaiters: [CheckedContinuation<Void, Never>] = []
    private var workAgain = false
    /// Remote operations stamped too far ahead of our clock, kept until time catches up.
    private var heldBack: [LoggedOperation] = []
    /// Recorded paths not found on disk, and since when (ns): deleted once gone long enough.
    private var missingSince: [String: Int64] = [:]
    /// What the last scan's walk saw (materialization's "is something there?" for paths it
    /// has no record of; a file made after the walk is never replaced: new files land with
    /// a rename that does not replace).
    private var lastWalk: [String: DiskEntry] = [:]
    private var cachedView: (generation: Int, view: FolderView)?
    private var watcher: FolderWatcher?
    private var generator = SystemRandomNumberGenerator()
    /// The clock as the node started: past everything it held when it stopped.
    private let startedAt: HLCTimestamp
    /// The folder, for every change this node makes to it (`ConfinedDirectory`).
    let disk: ConfinedDirectory
    /// The process's umask: a received file's mode is the sender's less these bits.
    let umaskBits: mode_t
    /// When a fetch last found no room (logged once a minute).
    private var lastNoRoom: ContinuousClock.Instant?
    /// Paths the folder could not take, logged once each.
    private var refusedPaths: Set<String> = []
    /// Paths that are neither files nor directories here (symbolic links): not synced, and
    /// never taken for deleted — what the peers have there stays. Logged once each.
    private var foreignPaths: Set<String> = []

    init(folder: String, stateDirectory: String, node: NodeID, key: Ed25519.PrivateKey, configuration: MetadataConfiguration,
         log: OperationLog, p2p: BlockExchangePlugin, logger: Logger) throws {
        self.key = key
        self.folder = folder
        disk = try ConfinedDirectory(path: folder)
        let mask = umask(0o022)
        umask(mask)
        umaskBits = mask
        self.stateDirectory = stateDirectory
        self.configuration = configuration
        self.log = log
        self.p2p = p2p
        self.logger = logger
        let loaded = try log.load()
        replica = Replica(node: node, wall: loaded.wall, counter: loaded.counter, settled: loaded.settled, operations: loaded.operations)
        paths = loaded.paths
        reports = ReplicaReports(node: node, peers: p2p.storageConfiguration.peers.map(\.id))
        startedAt = HLCTimestamp(wall: loaded.wall, counter: loaded.counter, node: node)
        durableVector = replica.vector
    }

    static var nowMilliseconds: UInt64 { UInt64(Date().timeIntervalSince1970 * 1000) }

    // MARK: Running

    func start() {
        watcher = FolderWatcher { [weak self] in
            guard let self else { return }
            Task { await self.requestWork() }
        }
        let interval = configuration.rescanInterval.duration
        Task { [weak self] in
            while let self, await self.isRunning {
                await self.requestWork()
                // The vectors again: what a lost push missed is sent, and peers learn how far
                // this node is (settling needs it).
                await self.report()
                try? await Task.sleep(for: interval)
            }
        }
    }

    private var stopped = false
    var isRunning: Bool { !stopped }

    /// Whether what changed while the node was stopped is committed; peers' frames wait for
    /// it (`scan`: those changes are stamped after the clock at start, past every move a peer
    /// may have settled — until the node applies a peer's operations).
    private var firstPassDone = false
    private var firstScanBegan: ContinuousClock.Instant?
    private var awaitingFirstPass: [CheckedContinuation<Void, Never>] = []

    private func firstPass() async {
        guard !firstPassDone else { return }
        await withCheckedContinuation { awaitingFirstPass.append($0) }
    }

    private func finishFirstPass() {
        firstPassDone = true
        for waiting in awaitingFirstPass { waiting.resume() }
        awaitingFirstPass = []
    }

    /// The folder's own modification time (ns): when a name at its top last changed.
    private func folderModified() -> Int64? {
        var info = stat()
        guard stat(folder, &info) == 0 else { return nil }
        return Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
    }

    /// Stops watching and waits (5 s at most) for a pass in progress, so what it did to the
    /// folder is recorded: a file that landed just before a stop, then deleted while the node
    /// was down, would otherwise come back as if it had never been here.
    func stop() async {
        stopped = true
        finishFirstPass()
        watcher?.stop()
        if working {
            await withCheckedContinuation { continuation in
                passEndWaiters.append(continuation)
                // The limit: the waiter goes on after 5 s if the pass has not ended by then.
                Task { [weak self] in
                    try? await Task.sleep(for: .seconds(5))
                    await self?.resumePassEndWaiters()
                }
            }
        }
        await persist([:])
    }

    /// Asks for a scan-and-materialize pass (one runs at a time; a request during one makes
    /// another follow it).
    func requestWork() {
        guard !stopped else { return }
        if working {
            workAgain = true
            return
        }
        working = true
        Task { await self.work() }
    }

    private func work() async {
        repeat {
            workAgain = false
            releaseHeldBack()
            let began = ContinuousClock.now
            let unstable = await scan()
            // What the node found after a stop is all recorded once a scan finds nothing in
            // flight, or one ran `stable_after` after the first (a path found missing waits
            // that long before it is a delete) — 10 s at most: a file written all the time must
            // not keep the peers waiting (a delete found later is stamped when found).
            if firstScanBegan == nil { firstScanBegan = began }
            if !unstable || began - firstScanBegan! >= min(configuration.stableAfter.duration, .seconds(10)) { finishFirstPass() }
            await materialize()
            pruneVersions()
            if unstable {
                // Something is still being written: look again once it may have settled.
                let wait = configuration.stableAfter.duration + .milliseconds(100)
                Task { [weak self] in
                    try? await Task.sleep(for: wait)
                    await self?.requestWork()
                }
            }
        } while workAgain && !stopped
        working = false
        resumePassEndWaiters()
    }

    /// Resumes whoever waits for the pass to end (`stop`); each waiter once.
    private func resumePassEndWaiters() {
        let waiters = passEndWaiters
        passEndWaiters.removeAll()
        for waiter in waiters { waiter.resume() }
    }

    // MARK: Peers

    func connected(_ link: PeerLink) {
        links[link.peer] = link
        retryFailedFetches()
        link.send(SyncMessage.report(reports.table(own: durableVector)))
    }

    private func report() {
        let message = SyncMessage.report(reports.table(own: durableVector))
        for link in links.values { link.send(message) }
    }

    /// Only when `link` is the session held: the end of a displaced one can arrive after its
    /// successor's `connected` (each comes in a task of its own), and forgetting the peer then
    /// would leave a live session unused — no pushes, no reports, a peer's change never arriving.
    func disconnected(_ link: PeerLink) {
        guard let held = links[link.peer], held.isSame(as: link) else { return }
        links[link.peer] = nil
        sentSettled.remove(link.peer)
    }

    /// A peer's frame: decoded and checked (`SyncMessage`), then handled. A frame that fails
    /// is refused whole: one log line naming the peer and what was wrong, a count by reason
    /// (`harp_sync_refused_total`), and the peer is penalized (its session closed, new ones
    /// refused for a while).
    func received(type: UInt8, body: [UInt8], from link: PeerLink) async {
        await firstPass()
        let peer = link.peer
        do {
            switch try SyncMessage.decode(type: type, body: body) {
            case .report(let table):
                let theirs = table.vectors[peer] ?? [:]
                if replica.lacksSettled(theirs), sentSettled.insert(peer).inserted { sendSettled(to: peer) }
                for batch in SyncMessage.batches(replica.missing(for: theirs)) {
                    links[peer]?.send(SyncMessage.operations(batch))
                }
                reports.merge(table)
                await settle()
            case .settled(let part):
                try await receivedSettled(part, body: body, from: peer)
            case .operations(let batch):
                try await accept(batch, from: peer)
            }
        } catch let refusal as SyncRefusal {
            refuse(refusal, from: link)
        } catch {
            logger.error("handling a frame of peer \(peer) failed: \(error)")
        }
    }

    private func refuse(_ refusal: SyncRefusal, from link: PeerLink) {
        Counter(label: "harp_sync_refused_total", dimensions: [("reason", refusal.reason)]).increment()
        logger.warning("refused a frame of peer \(link.peer): \(refusal)")
        link.penalize(reason: refusal.description)
    }

    /// One part of a peer's settled state: staged on disk until every part is in (memory stays
    /// bounded whatever the count), then checked and taken — only by a node that has settled
    /// nothing itself (`Replica.install`).
    private func receivedSettled(_ part: SyncMessage.SettledPart, body: [UInt8], from peer: NodeID) async throws {
        guard replica.floor.isEmpty else { return logger.info("ignored the settled state of \(peer): this node has one") }
        let staged = try await log.stagePart(body, index: part.index, total: part.total, from: peer)
        guard staged == part.total else { return }
        var parts: [SyncMessage.SettledPart] = []
        for stored in try await log.takeParts(from: peer) {
            guard case .settled(let decoded) = try SyncMessage.decode(type: SyncMessage.settledType, body: stored),
                  decoded.total == part.total, decoded.settled.floor == part.settled.floor else {
                throw SyncRefusal.settled("parts that do not belong together")
            }
            parts.append(decoded)
        }
        let (settled, operations) = SyncMessage.SettledPart.assemble(parts)
        try await install(settled, operations: operations, clock: HLCTimestamp(wall: part.clock.wall, counter: part.clock.counter, node: peer),
                          from: peer)
    }

    /// Applies remote operations: proven ones only (`OperationChain`: each run from its
    /// origin, signed), new ones only, none stamped beyond the skew limit; durable before
    /// they are passed on to the other peers (with their proofs: a relay cannot change them).
    private func accept(_ batch: [LoggedOperation], from peer: NodeID?) async throws(SyncRefusal) {
        let now = Self.nowMilliseconds
        var timely: [LoggedOperation] = []
        for logged in batch where !replica.contains(logged) {
            if tooFarAhead(logged, now: now) {
                if heldBack.count < Self.heldBackLimit, !heldBack.contains(logged) {
                    heldBack.append(logged)
                    logger.warning("held back an operation from \(logged.origin) stamped \(logged.operation.timestamp.wall - now) ms ahead of this node's clock (max_clock_skew \(configuration.maxClockSkew))")
                }
                continue
            }
            timely.append(logged)
        }
        // An operation held back waits with the rest of its origin's run: the chain goes on
        // only in order.
        let verified = try OperationChain.verify(timely, heads: replica.heads) { self.replica.contains($0) }
        let fresh = verified.proven
        guard !fresh.isEmpty else { return }
        logger.info("applied \(fresh.count) operation\(fresh.count == 1 ? "" : "s") from \(peer.map { "\($0)" } ?? "the held-back queue")")
        replica.apply(fresh)
        replica.advance(verified.heads)
        let snapshot = replica.vector
        do {
            try await log.append(fresh, clock: replica.clock)
            appended(snapshot)
        } catch {
            appendFailed = true
            logger.error("cannot record operations: \(error); this node stops reporting what it holds until it restarts")
        }
        for (other, link) in links where other != peer {
            for part in SyncMessage.batches(fresh) { link.send(SyncMessage.operations(part)) }
        }
        requestWork()
    }

    /// Operations held back for their clock, at most (a peer cannot fill memory with them).
    static let heldBackLimit = 100_000

    /// An append is on disk: so is everything up to `snapshot` (the vector right after it).
    /// Its resumption may overtake an earlier one's, hence the maximum.
    private func appended(_ snapshot: [NodeID: UInt64]) {
        guard !appendFailed else { return }
        durableVector.merge(snapshot) { max($0, $1) }
    }

    /// Sends this node's settled state to a peer whose vector lacks settled moves: a node that
    /// joined the folder after they were dropped (no peer can send them as operations now).
    private func sendSettled(to peer: NodeID) {
        do {
            let settled = try log.settled()
            let below = replica.allOperations.filter { $0.sequence <= settled.floor[$0.origin] ?? 0 }
            for part in SyncMessage.SettledPart.split(settled, operations: below, clock: replica.clock) {
                links[peer]?.send(SyncMessage.settled(part))
            }
            logger.info("peer \(peer) lacks moves this node has settled: sent the settled state (\(settled.placements.count) items)")
        } catch {
            logger.error("cannot read the settled state for \(peer): \(error)")
        }
    }

    /// Takes a peer's settled state when this node lacks what it covers (Replica.install).
    private func install(_ settled: Replica.Settled, operations below: [LoggedOperation], clock: HLCTimestamp,
                         from peer: NodeID) async throws(SyncRefusal) {
        try check(settled, clock: clock)
        guard let dropped = replica.install(settled, operations: below, clock: clock) else {
            // Already took one (from another peer, or settled itself): what this one covers
            // comes as operations from the peers that still keep it.
            return logger.info("ignored the settled state of \(peer): this node has one")
        }
        do {
            try await log.install(settled, dropped: dropped)
            try await log.append(below, clock: replica.clock)
            if !appendFailed { durableVector.merge(settled.floor) { max($0, $1) } }
            logger.info("took the settled state of \(peer) (\(settled.placements.count) items)")
            // The operations above it that came meanwhile could not be proven without it (their
            // chains start at its floor) and were dropped: say at once how far this node is, so
            // the peers send them again now, not at the next periodic report (a new node
            // waited 30 s for its last files).
            report()
        } catch {
            settlingFailed = true
            appendFailed = true
            logger.error("cannot record the settled state from \(peer): \(error); this node stops reporting what it holds until it restarts")
        }
        requestWork()
    }

    /// What a peer's settled state must be before it replaces this node's tree: a tree (every
    /// placement reaches the root or the trash, no cycle), a clock within `max_clock_skew`, a
    /// floor that claims no more of this node's own operations than it made, and an account of
    /// every item whose moves it would drop here — a state that leaves out an item this node
    /// knows would delete it from the folder.
    private func check(_ settled: Replica.Settled, clock: HLCTimestamp) throws(SyncRefusal) {
        if let problem = ReplicatedTree.problem(in: settled.placements) { throw .settled(problem) }
        if tooFarAhead(LoggedOperation(origin: clock.node, sequence: 1, operation: .move(.init(timestamp: clock, item: .root, parent: .root, name: "x", isDirectory: true))),
                       now: Self.nowMilliseconds) {
            throw .settled("its clock is \(clock.wall - Self.nowMilliseconds) ms ahead of this node's (max_clock_skew \(configuration.maxClockSkew))")
        }
        let own = settled.floor[replica.node] ?? 0
        guard own <= replica.vector[replica.node] ?? 0 else {
            throw .settled("it claims this node's operations up to \(own); this node made \(replica.vector[replica.node] ?? 0)")
        }
        for (origin, sequence) in settled.floor where sequence > 0 && settled.floorChains[origin]?.count != 32 {
            throw .settled("no chain hash for the floor \(sequence) of \(origin)")
        }
        for logged in replica.allOperations where logged.sequence <= settled.floor[logged.origin] ?? 0 {
            guard case .move(let move) = logged.operation, move.parent != .trash else { continue }
            guard settled.placements[move.item] != nil else {
                throw .settled("it leaves out \(move.item) (\"\(move.name)\"), which its floor says it holds")
            }
        }
    }

    /// Drops the moves below the causally stable point (Replica.settle) and records that.
    private func settle() async {
        guard !settlingFailed, let (settlement, dropped) = replica.settle(reports) else { return }
        do {
            try await log.settle(settlement, dropped: dropped, floor: replica.floor, chains: replica.floorChains)
        } catch {
            settlingFailed = true
            logger.error("cannot record settled operations: \(error); settling stops until this node restarts")
        }
        logger.debug("settled \(settlement.moves.count) moves; \(replica.operationCount) operations kept")
    }

    private func tooFarAhead(_ logged: LoggedOperation, now: UInt64) -> Bool {
        HybridLogicalClock.isTooFarAhead(logged.operation.timestamp, now: now,
                                         maxSkew: UInt64(configuration.maxClockSkew.duration.nanoseconds / 1_000_000))
    }

    private func releaseHeldBack() {
        guard !heldBack.isEmpty else { return }
        let now = Self.nowMilliseconds
        let ready = heldBack.filter { !tooFarAhead($0, now: now) }
        guard !ready.isEmpty else { return }
        heldBack.removeAll { ready.contains($0) }
        Task {
            do { try await self.accept(ready, from: nil) } catch { self.logger.warning("held-back operations refused: \(error)") }
        }
    }

    /// A local operation to make, and when its change happened if the node found it later
    /// than that (`ChangeTime`); nil: now.
    struct LocalChange {
        let make: (HLCTimestamp) -> TreeOperation
        var happened: (nanoseconds: Int64, after: HLCTimestamp?)?

        static func now(_ make: @escaping (HLCTimestamp) -> TreeOperation) -> LocalChange { LocalChange(make: make) }

        /// `nanoseconds`: a file system time.
        static func found(at nanoseconds: Int64, after: HLCTimestamp?, _ make: @escaping (HLCTimestamp) -> TreeOperation) -> LocalChange {
            LocalChange(make: make, happened: (nanoseconds, after))
        }
    }

    /// Makes, records and sends local operations.
    private func commit(_ changes: [LocalChange]) async {
        guard !changes.isEmpty else { return }
        var made: [LoggedOperation] = []
        let now = Self.nowMilliseconds
        for change in changes {
            if let happened = change.happened {
                let stamp = ChangeTime.stamp(happened: happened.nanoseconds, after: happened.after, now: now, node: replica.node)
                made.append(replica.local(stamped: stamp, change.make))
            } else {
                made.append(replica.local(now: now, change.make))
            }
        }
        made = replica.seal(made, key: key)
        let snapshot = replica.vector
        do {
            try await log.append(made, clock: replica.clock)
            appended(snapshot)
        } catch {
            appendFailed = true
            logger.error("cannot record local operations: \(error); this node stops reporting what it holds until it restarts")
        }
        for link in links.values {
            for batch in SyncMessage.batches(made) { link.send(SyncMessage.operations(batch)) }
        }
    }

    // MARK: Folder → operations

    struct DiskEntry {
        let isDirectory: Bool
        let inode: Int64
        let size: Int64
        let mtime: Int64
        /// Status change time (ns): a rename or a new link sets it.
        let ctime: Int64
        let mode: UInt16
    }

    /// Turns what changed on disk since the last pass into operations. Returns whether a file
    /// was still being written (not versioned yet).
    private func scan() async -> Bool {
        let ignore = Ignore(folder: folder)
        let (disk, foreign) = walk(ignore)
        lastWalk = disk
        let view = view()
        watcher?.watch([folder] + disk.filter(\.value.isDirectory).map { folder + "/" + $0.key })
        let nowNanos = Int64(Date().timeIntervalSince1970 * 1e9)
        let stable = Int64(configuration.stableAfter.duration.nanoseconds)
        var unstable = false
        var makes: [LocalChange] = []
        var seen: [String] = []
        // Moves and deletes the scans at start find happened while the node was stopped:
        // stamped when they happened, after everything the node held then (its clock at
        // start, which is past every move a peer may have settled: no remote operation is
        // applied before they are committed). Later ones are stamped now.
        let foundAfterStop = !firstPassDone
        func newest(_ item: ItemID) -> HLCTimestamp? { replica.histories.head(of: item)?.timestamp }
        var changes: [String: PathState?] = [:]
        // Paths whose recorded inode is no longer there: sources of renames.
        var vanished: [Int64: String] = [:]
        for (path, state) in paths where disk[path].map({ $0.inode != state.inode || $0.isDirectory != state.isDirectory }) ?? true {
            vanished[state.inode] = path
        }
        // Nothing is recorded under a parent that is not recorded: a child whose directory is
        // not (yet) in `paths` waits for a pass that records the directory first. (Placing it at
        // the top instead flattened a 2,000-file directory moved mid-walk, on every node.)
        func parentItem(of path: String) -> ItemID? {
            guard let slash = path.lastIndex(of: "/") else { return .root }
            guard let parent = paths[String(path[..<slash])], parent.isDirectory else { return nil }
            return parent.item
        }
        // A directory has one name: seen under two in one walk, the walk raced a rename of it
        // (or of a directory above it) — an open directory still lists after it moved. Nothing
        // under either name is decided this pass; the next walk sees one name: one move.
        var namesOfDirectory: [Int64: [String]] = [:]
        for (path, entry) in disk where entry.isDirectory { namesOfDirectory[entry.inode, default: []].append(path) }
        let raced = namesOfDirectory.values.filter { $0.count > 1 }.flatMap { $0 }
        func isRaced(_ path: String) -> Bool { raced.contains { path == $0 || path.hasPrefix($0 + "/") } }
        if !raced.isEmpty { unstable = true }
        func name(of path: String) -> String { path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path }
        func record(_ path: String, _ state: PathState?) {
            paths[path] = state
            changes[path] = .some(state)
        }
        // A file saved by writing a new one and renaming it over the old (what most editors
        // do) has a new inode at the same path: still an edit of the same item, as long as the
        // old inode did not move elsewhere.
        let inodesOnDisk = Set(disk.values.map(\.inode))
        let recordedInodes = Dictionary(paths.map { ($0.value.inode, $0.key) }, uniquingKeysWith: { first, _ in first })
        for path in disk.keys.sorted() where !isRaced(path) {
            let entry = disk[path]!
            if let state = paths[path], state.isDirectory == entry.isDirectory,
               state.inode == entry.inode || (!entry.isDirectory && !inodesOnDisk.contains(state.inode)) {
                guard !entry.isDirectory else { continue }
                guard state.inode != entry.inode || state.size != entry.size || state.mtime != entry.mtime else {
                    // The same bytes with other permissions (chmod): a version of the mode alone.
                    if state.mode != entry.mode, let root = state.root {
                        let item = state.item, size = Int(entry.size), mtime = entry.mtime, mode = entry.mode
                        makes.append(.found(at: entry.ctime, after: newest(item)) {
                            .version(.init(timestamp: $0, item: item, root: root, size: size, mtime: mtime, base: root, mode: mode))
                        })
                        seen.append("changed the mode of \(path)")
                        var changed = state
                        changed.mode = mode
                        record(path, changed)
                    }
                    continue
                }
                guard nowNanos - entry.mtime >= stable else {
                    unstable = true
                    continue
                }
                guard let root = index(path) else { continue }
                let item = state.item, base = state.root, size = Int(entry.size), mtime = entry.mtime, mode = entry.mode
                if root != base || mode != state.mode {
                    makes.append(.found(at: mtime, after: newest(item)) {
                        .version(.init(timestamp: $0, item: item, root: root, size: size, mtime: mtime, base: base, mode: mode))
                    })
                    seen.append("edited \(path)")
                }
                record(path, PathState(item: item, isDirectory: false, inode: entry.inode, size: entry.size, mtime: entry.mtime, root: root,
                                       mode: mode))
                continue
            }
            if let from = vanished[entry.inode], let old = paths[from], old.isDirectory == entry.isDirectory {
                // The same inode under a new name: a move, not a delete and a create.
                guard let parent = parentItem(of: path) else {
                    unstable = true
                    continue
                }
                vanished[entry.inode] = nil
                let item = old.item, newName = name(of: path), directory = old.isDirectory
                let move: (HLCTimestamp) -> TreeOperation = { .move(.init(timestamp: $0, item: item, parent: parent, name: newName, isDirectory: directory)) }
                makes.append(foundAfterStop ? .found(at: entry.ctime, after: startedAt, move) : .now(move))
                seen.append("moved \(from) to \(path)")
                indexMoved(from: from, to: path)
                record(from, nil)
                record(path, PathState(item: item, isDirectory: directory, inode: entry.inode, size: old.size, mtime: old.mtime, root: old.root,
                                       mode: old.mode))
                if directory {
                    for (child, state) in paths where child.hasPrefix(from + "/") {
                        record(child, nil)
                        record(path + child.dropFirst(from.count), state)
                    }
                }
                continue
            }
            // A file without a record where the tree shows a file (its record was lost — the
            // node stopped right after it landed, or it landed while its directory moved) is
            // that item: claimed now, versioned by a later pass if its bytes differ.
            if !entry.isDirectory, let shown = view.entries[path], !shown.isDirectory, let head = shown.head {
                record(path, PathState(item: head.item, isDirectory: false, inode: entry.inode, size: -1, mtime: 0, root: head.root, mode: head.mode))
                unstable = true
                continue
            }
            if !entry.isDirectory && nowNanos - entry.mtime < stable {
                unstable = true
                continue
            }
            // Its inode still recorded under a path the walk also saw, and just renamed or
            // linked: a rename that happened while the folder was walked (both names seen).
            // The next look sees one name: a move. (A hard link, once settled, is a new file.)
            if let other = recordedInodes[entry.inode], other != path, disk[other]?.inode == entry.inode, nowNanos - entry.ctime < stable {
                unstable = true
                continue
            }
            guard let parent = parentItem(of: path) else {
                unstable = true
                continue
            }
            let directory = entry.isDirectory
            var root: ChunkID?
            if !directory {
                guard let indexed = index(path) else { continue }
                root = indexed
            }
            // A directory the tree already shows at this path is that directory.
            if directory, let shown = view.entries[path], shown.isDirectory {
                record(path, PathState(item: shown.items[0], isDirectory: true, inode: entry.inode, size: entry.size, mtime: entry.mtime, root: nil,
                                       mode: entry.mode))
                continue
            }
            let item = ItemID.random(using: &generator), newName = name(of: path)
            // A new item is placed now (it orders nothing the peers did; a create inside a
            // directory deleted meanwhile elsewhere keeps the directory), its bytes when written.
            makes.append(.now { .move(.init(timestamp: $0, item: item, parent: parent, name: newName, isDirectory: directory)) })
            seen.append("created \(path)")
            if let root {
                let size = Int(entry.size), mtime = entry.mtime, mode = entry.mode
                makes.append(.found(at: mtime, after: nil) {
                    .version(.init(timestamp: $0, item: item, root: root, size: size, mtime: mtime, base: nil, mode: mode))
                })
            }
            record(path, PathState(item: item, isDirectory: directory, inode: entry.inode, size: entry.size, mtime: entry.mtime, root: root,
                                   mode: entry.mode))
        }
        // What is gone: a delete for each topmost path (its subtree goes with it) — once it
        // has stayed gone for `stable_after`. A rename that happens while the folder is being
        // walked can hide a file under both names; the next look finds it under the new one
        // (a move, history kept) instead of a delete and an unrelated create.
        for path in missingSince.keys where disk[path] != nil || paths[path] == nil { missingSince[path] = nil }
        for (path, state) in paths where disk[path] == nil || disk[path]!.inode != state.inode {
            guard paths[path] == state, !isRaced(path) else { continue }
            // Ignored here (.harpignore): invisible to sync, so never a delete — the walk does not
            // look there, and what the peers have there stays.
            if ignore.covers(path) { continue }
            // A symbolic link (or anything not a file or directory) at the path or above it:
            // not synced, never taken for a delete — the peers keep what they have there.
            if let link = foreign.first(where: { path == $0 || path.hasPrefix($0 + "/") }) {
                if foreignPaths.insert(link).inserted {
                    logger.warning("\(link) is a symbolic link (or another special file): not synced, and what the peers have there is kept")
                }
                continue
            }
            let since = missingSince[path] ?? nowNanos
            guard nowNanos - since >= stable else {
                missingSince[path] = since
                unstable = true
                continue
            }
            missingSince[path] = nil
            let parentGone = path.lastIndex(of: "/").map { slash in disk[String(path[..<slash])] == nil } ?? false
            if !parentGone {
                let item = state.item, oldName = name(of: path), directory = state.isDirectory
                let delete: (HLCTimestamp) -> TreeOperation = { .move(.init(timestamp: $0, item: item, parent: .trash, name: oldName, isDirectory: directory)) }
                // Removing a name changes its directory's modification time: when it happened.
                let parentTime = path.lastIndex(of: "/").map { disk[String(path[..<$0])]?.mtime } ?? folderModified()
                if foundAfterStop, let parentTime { makes.append(.found(at: parentTime, after: startedAt, delete)) } else { makes.append(.now(delete)) }
                seen.append("deleted \(path)")
            }
            record(path, nil)
        }
        if !seen.isEmpty { logger.info("local changes: \(seen.joined(separator: ", "))") }
        await commit(makes)
        await persist(changes)
        return unstable
    }

    /// Tells the p2p index a synced path was renamed, so its content is still served.
    private func indexMoved(from: String, to: String) {
        do {
            try p2p.folderIndex.moved(from: from, to: to)
        } catch {
            logger.warning("the index does not follow \(from) to \(to): \(error)")
        }
    }

    private func index(_ path: String) -> ChunkID? {
        do {
            return try p2p.folderIndex.index(path)
        } catch {
            logger.info("not versioned yet: \(error)")
            return nil
        }
    }

    /// Landed files' records not written yet (`persistSoon`).
    private var unpersisted: [String: PathState?] = [:]

    /// Records `state` at `path` within 50 ms, with whatever else comes meanwhile.
    private func persistSoon(_ path: String, _ state: PathState?) {
        let first = unpersisted.isEmpty
        unpersisted[path] = .some(state)
        guard first else { return }
        Task {
            try? await Task.sleep(for: .milliseconds(50))
            await self.persist([:])
        }
    }

    /// Writes `changes`, after the records waiting (`persistSoon`): a later record of a path
    /// never goes under an earlier one.
    private func persist(_ changes: [String: PathState?]) async {
        let landed = unpersisted
        unpersisted = [:]
        // A landed file is on disk (its download synced it) but its rename into place is only
        // once its directory is synced: before the record says it is there, or a power cut
        // could leave a record of a file that is not — which the next scan takes for a delete.
        // One fsync per directory per batch.
        let directories = Set(landed.compactMap { path, state in state == nil ? nil : path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "" })
        for directory in directories {
            let fd = disk.open(directory, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            if fd >= 0 {
                fsync(fd)
                close(fd)
            }
        }
        let all = landed.merging(changes) { $1 }
        guard !all.isEmpty else { return }
        do {
            try await log.record(all)
        } catch {
            logger.error("cannot record the folder's state: \(error)")
        }
    }

    /// Every synced path under the folder (relative), without hidden names, the node's state
    /// directory, or what `.harpignore` names — and the paths that are something else
    /// (symbolic links, devices): those are reported, never followed. Directories are opened
    /// beneath their parent with O_NOFOLLOW, so a directory swapped for a link mid-walk is not
    /// entered either.
    private func walk(_ ignore: Ignore) -> (entries: [String: DiskEntry], foreign: Set<String>) {
        var out: [String: DiskEntry] = [:]
        var foreign: Set<String> = []
        func visit(_ relative: String, _ fd: Int32) {
            guard let directory = fdopendir(fd) else {
                close(fd)
                return
            }
            defer { closedir(directory) }
            let dirfd = Glibc.dirfd(directory)
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name.hasPrefix(".") { continue }
                let child = relative.isEmpty ? name : relative + "/" + name
                if folder + "/" + child == stateDirectory || ignore.matches(child) { continue }
                var info = stat()
                guard fstatat(dirfd, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
                let kind = info.st_mode & S_IFMT
                guard kind == S_IFDIR || kind == S_IFREG else {
                    foreign.insert(child)
                    continue
                }
                out[child] = DiskEntry(isDirectory: kind == S_IFDIR, inode: Int64(info.st_ino), size: Int64(info.st_size),
                                       mtime: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec),
                                       ctime: Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec),
                                       mode: UInt16(info.st_mode & 0o777))
                if kind == S_IFDIR {
                    let sub = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                    if sub >= 0 { visit(child, sub) }
                }
            }
        }
        let top = disk.open("", flags: O_RDONLY | O_DIRECTORY)
        if top >= 0 { visit("", top) }
        return (out, foreign)
    }

    // MARK: Operations → folder

    /// Makes the folder show the view: directories made, files fetched (from the folder
    /// itself, the version store, or the peers), moves done as renames, removed files kept
    /// in the version store. Every change goes through `disk` (`ConfinedDirectory`): beneath
    /// the folder, never through a symbolic link — a path under one is left alone and logged.
    private func materialize() async {
        // Ignored paths are the user's alone here: nothing is created, fetched, moved or
        // removed under them.
        let ignore = Ignore(folder: folder)
        let full = view()
        let view = full.excluding { ignore.covers($0) }
        var changes: [String: PathState?] = [:]
        // Where each item is recorded: one lookup per entry (searching `paths` for each was
        // quadratic — 53% of a receiving node's CPU at 2,000 files).
        var pathOfItem = Dictionary(paths.map { ($0.value.item, $0.key) }, uniquingKeysWith: { first, _ in first })
        func record(_ path: String, _ state: PathState?) {
            if let old = paths[path], pathOfItem[old.item] == path { pathOfItem[old.item] = nil }
            paths[path] = state
            if let state { pathOfItem[state.item] = path }
            changes[path] = .some(state)
        }
        // Directories and moves first, then removals, then content: a slow download does not
        // hold up a delete.
        var fetches: [(path: String, head: TreeOperation.Version)] = []
        for entry in view.entries.values.sorted(by: { $0.path < $1.path }) {
            if entry.isDirectory {
                if let current = paths[entry.path], current.isDirectory { continue }
                if let from = entry.items.lazy.compactMap({ pathOfItem[$0] }).first, from != entry.path,
                   disk.lstat(from) != nil, expectOwn(from, entry.path), disk.rename(from, in: disk, to: entry.path, replace: false) == 0 {
                    indexMoved(from: from, to: entry.path)
                    for (path, state) in paths where path == from || path.hasPrefix(from + "/") {
                        record(path, nil)
                        record(entry.path + path.dropFirst(from.count), state)
                    }
                    continue
                }
                expectOwn(entry.path)
                let made = disk.mkdir(entry.path)
                if made == 0 { watcher?.watch([folder + "/" + entry.path]) }
                // A directory only if it is one (made now, or there already — the user's, of the
                // same name: same names merge); never what a link points at.
                if made == 0 || made == EEXIST, let state = state(entry.path, item: entry.items[0], root: nil), state.isDirectory {
                    record(entry.path, state)
                } else {
                    refusedPath(entry.path, made)
                }
                continue
            }
            guard let head = entry.head else { continue }
            if let current = paths[entry.path], current.root == head.root {
                if current.mode != head.mode { applyMode(head.mode, to: entry.path, recorded: current) }
                continue
            }
            // A local file the next scan will version. (Not seen by the walk: nothing is asked of
            // the disk — a file made since is never replaced, new files land without replacing.)
            if paths[entry.path] == nil, lastWalk[entry.path] != nil, disk.lstat(entry.path) != nil { continue }
            if missingSince[entry.path] != nil { continue }  // deleted (or being renamed) here: the scan decides
            // Changed on disk since it was recorded (being written, or not scanned yet): the
            // user's bytes are never replaced; the next scan makes them a version.
            if let current = paths[entry.path], !unchanged(entry.path, current) { continue }
            // The same content under another path of ours: a move.
            if let from = pathOfItem[head.item], let recorded = paths[from], recorded.root == head.root, from != entry.path,
               expectOwn(from, entry.path), disk.rename(from, in: disk, to: entry.path, replace: false) == 0 {
                indexMoved(from: from, to: entry.path)
                record(from, nil)
                // As it was recorded (a rename keeps the inode): bytes the user changed meanwhile
                // are still a change to the next scan, not taken for the recorded version.
                record(entry.path, recorded)
                continue
            }
            fetches.append((entry.path, head))
        }
        // Recorded paths the view no longer has: files into the version store, then empty
        // directories (deepest first). A file whose bytes cannot be kept stays where it is.
        for (path, state) in paths.sorted(by: { $0.key.count > $1.key.count }) where view.entries[path] == nil && !ignore.covers(path) {
            if !state.isDirectory, !unchanged(path, state) { continue }  // edited meanwhile: the scan decides
            if state.isDirectory {
                expectOwn(path, events: 2)  // its parent's delete event and its own
                _ = disk.rmdir(path)
            } else if !keepVersion(path, root: state.root) {
                continue
            }
            record(path, nil)
        }
        // Content arrives in the background, several files at once: a pass never waits for the
        // network, so local changes are published while remote ones download, and a file no
        // peer can send holds up nothing else (it is tried again later, less often). What is
        // wanted is set before the pass awaits anything: a fetch landing meanwhile goes where
        // this pass wants it (one that went by the last pass's wish, a path a move had just
        // left, stayed there on a new node).
        wanted = Dictionary(fetches.map { ($0.head.root, ($0.path, $0.head, paths[$0.path])) }, uniquingKeysWith: { first, _ in first })
        queued = fetches
        next = 0
        await persist(changes)
        startFetches()
    }

    // MARK: Fetching in the background

    /// Files fetched at once, at most.
    static let fetchesInFlight = 16
    /// The content each path of the last pass waits for (by root: one fetch per root).
    private var wanted: [ChunkID: (path: String, head: TreeOperation.Version, over: PathState?)] = [:]
    private var inFlight: Set<ChunkID> = []
    /// The last pass's fetches in order, and the first not started yet.
    private var queued: [(path: String, head: TreeOperation.Version)] = []
    private var next = 0
    /// Roots whose fetch failed: not tried again before `until` (the wait doubles, to a minute).
    private var failedFetches: [ChunkID: (until: ContinuousClock.Instant, wait: Duration, path: String, reason: String)] = [:]
    /// Files put in place in the last 10 s, and their sizes (the rate `harp storage status` shows).
    private var landings: [(at: ContinuousClock.Instant, bytes: Int)] = []

    /// Starts queued fetches while fewer than `fetchesInFlight` run.
    private func startFetches() {
        let now = ContinuousClock.now
        while !stopped, inFlight.count < Self.fetchesInFlight, next < queued.count {
            let (path, head) = queued[next]
            next += 1
            if inFlight.contains(head.root) { continue }
            if let failed = failedFetches[head.root], now < failed.until { continue }
            inFlight.insert(head.root)
            Task { await self.fetch(head, at: path) }
        }
    }

    private func fetch(_ head: TreeOperation.Version, at path: String) async {
        let outcome = await stage(head)
        inFlight.remove(head.root)
        defer { startFetches() }
        let staged = stagingPath(head.root)
        if case .failed(let failure) = outcome {
            fetchFailed(head, at: path, failure)
            return
        }
        // Still wanted, by the path that waits for it now (a pass may have moved it: the
        // moves of a new node's catch-up often come after the creates), over what was there
        // when that was decided (the folder, a local edit or a newer remote version may have
        // moved on meanwhile)?
        guard !stopped, let still = wanted[head.root], replica.histories.head(of: still.head.item)?.root == head.root,
              paths[still.path] == still.over else {
            _ = disk.unlink(staged)
            return
        }
        switch put(still.head, at: still.path) {
        case .failed(let failure):
            fetchFailed(still.head, at: still.path, failure)
        case .done(let inode):
            failedFetches[head.root] = nil
            wanted[head.root] = nil
            let now = ContinuousClock.now
            landings.append((now, head.size))
            if let stale = landings.firstIndex(where: { now - $0.at < .seconds(10) }), stale > 0 { landings.removeFirst(stale) }
            let state = state(still.path, item: still.head.item, root: head.root)
                // Moved away the moment it landed (its directory renamed meanwhile): recorded
                // by inode, so the next scan sees the move and nothing new.
                ?? PathState(item: still.head.item, isDirectory: false, inode: inode, size: Int64(head.size), mtime: 0, root: head.root,
                             mode: still.head.mode)
            paths[still.path] = state
            // Recorded with the others landing now, in one transaction (one fsync per file was
            // most of what a small file cost after its download). A node killed before the write
            // finds the file where the tree shows it and claims it for its item (`scan`).
            persistSoon(still.path, state)
            // Its own events ask for no scan (FolderWatcher.expect): if the view moved on while
            // it landed, a pass puts it right now rather than at the next periodic one.
            if view().entries[still.path]?.head?.root != head.root { requestWork() }
        }
    }

    private func fetchFailed(_ head: TreeOperation.Version, at path: String, _ failure: String) {
        let wait = min((failedFetches[head.root]?.wait ?? .milliseconds(500)) * 2, .seconds(60))
        failedFetches[head.root] = (ContinuousClock.now + wait, wait, path, failure)
        // A full disk fails every fetch: one line a minute says so.
        if failure.hasPrefix("no room") {
            let now = ContinuousClock.now
            if lastNoRoom.map({ now - $0 >= .seconds(60) }) ?? true {
                lastNoRoom = now
                logger.warning("cannot fetch \(path) (\(head.root)): \(failure); fetches wait until there is room")
            }
            return
        }
        logger.warning("cannot fetch \(path) (\(head.root)): \(failure); tried again in \(wait)")
    }

    /// A peer came: what failed may come from it.
    private func retryFailedFetches() {
        failedFetches = [:]
        if !wanted.isEmpty { requestWork() }
    }

    /// What waits for content (`harp storage status`): files queued, in flight, and failed
    /// (tried again later).
    var fetchState: FetchState {
        let now = ContinuousClock.now
        let recent = landings.filter { now - $0.at < .seconds(10) }
        return FetchState(pending: wanted.count, pendingBytes: wanted.values.reduce(0) { $0 + $1.head.size }, inFlight: inFlight.count,
                          inFlightBytes: inFlight.reduce(0) { $0 + (wanted[$1]?.head.size ?? 0) },
                          failures: failedFetches.values.sorted { $0.path < $1.path }.map { failure in
                              (failure.path, failure.reason, max(0, Double((failure.until - now).components.seconds)))
                          },
                          filesPerSecond: Double(recent.count) / 10, bytesPerSecond: Double(recent.reduce(0) { $0 + $1.bytes }) / 10)
    }

    struct FetchState {
        let pending: Int, pendingBytes: Int, inFlight: Int, inFlightBytes: Int
        /// Each failed fetch waiting to be tried again: the path, why, and in how many seconds.
        let failures: [(path: String, reason: String, retryIn: Double)]
        /// Over the last 10 s.
        let filesPerSecond: Double, bytesPerSecond: Double
    }

    /// Logs, once per path, why the folder could not take a change there (a symbolic link on
    /// the way, a file where a directory goes).
    private func refusedPath(_ path: String, _ error: Int32) {
        guard refusedPaths.insert(path).inserted else { return }
        let reason = error == ELOOP || error == EXDEV ? "a symbolic link is on the way (links are never followed)"
            : String(cString: strerror(error == 0 || error == EEXIST ? EEXIST : error))
        logger.warning("the folder cannot take \(path): \(reason); left as it is")
    }

    /// Gets the bytes of version `head` into `.harp-staging` under its content root (a name
    /// that never overflows NAME_MAX): made when empty, copied from the version store, or
    /// fetched from the peers.
    private func stage(_ head: TreeOperation.Version) async -> BlockExchangePlugin.FetchOutcome {
        let staged = stagingPath(head.root)
        _ = disk.mkdir(Self.staging, mode: 0o700)
        let stored = versionPath(head.root)
        // An empty file is made, not fetched: its content root is known (no chunks).
        if head.root == Self.emptyRoot {
            _ = disk.unlink(staged)
            let fd = disk.open(staged, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
            guard fd >= 0 else { return .failed("cannot create \(staged): \(String(cString: strerror(-fd)))") }
            close(fd)
            return .done(inode: 0)
        }
        if disk.lstat(stored) != nil, index(stored) == head.root {
            return copyFile(stored, to: staged) ? .done(inode: 0) : .failed("cannot copy \(stored)")
        }
        // Its directory is synced once it is renamed into place (`persist`), not here.
        return await p2p.fetch(head.root, into: folder + "/" + staged, syncDirectory: false)
    }

    /// Renames the staged bytes of `head` into place at `path` (beneath the folder). The bytes
    /// it replaces go to the version store as a second link first. A new file gets the
    /// version's mode (less the umask); a replaced one keeps a mode the user changed here.
    private func put(_ head: TreeOperation.Version, at path: String) -> BlockExchangePlugin.FetchOutcome {
        let staged = stagingPath(head.root)
        let previous = paths[path]
        // The user may have written, moved or removed the file while the bytes were fetched:
        // that stays (the next scan makes it a version, a move or a delete). A new file never
        // replaces one made meanwhile; a replaced one only if it is still what was recorded.
        // (Renaming over a file written during the fetch lost it: the randomized real-node
        // test found it.)
        if let previous, disk.lstat(path) == nil || !unchanged(path, previous) {
            _ = disk.unlink(staged)
            return .failed("\(path) changed here while the new version was fetched: what is there stays")
        }
        var mode = mode_t(head.mode) & ~umaskBits
        if let previous, let now = disk.lstat(path), mode_t(previous.mode) != now.st_mode & 0o777 {
            mode = now.st_mode & 0o777  // changed here since recorded: the user's
        }
        _ = disk.chmod(staged, mode: mode)
        setModificationTime(staged, to: head.mtime)
        guard let landed = disk.lstat(staged) else { return .failed("the staged copy vanished") }
        let linked = previous.flatMap { old in old.root.flatMap { linkVersion(path, root: $0) ? $0 : nil } }
        expectOwn(path)
        let moved = disk.rename(staged, in: disk, to: path, replace: previous != nil)
        guard moved == 0 else {
            _ = disk.unlink(staged)
            if let linked { _ = disk.unlink(versionPath(linked)) }
            if moved == EEXIST { return .failed("a file appeared at \(path) while the new version was fetched: the local bytes stay") }
            refusedPath(path, moved)
            return .failed("cannot put it in place: \(String(cString: strerror(moved)))")
        }
        return .done(inode: Int64(landed.st_ino))
    }

    /// Tells the watcher the node is about to change these paths (relative) itself, so that
    /// their events ask for no scan. True, to sit in a condition before the change.
    @discardableResult
    private func expectOwn(_ paths: String..., events: Int = 1) -> Bool {
        for path in paths { watcher?.expect(folder + "/" + path, events: events) }
        return true
    }

    /// The root of empty content (a manifest without chunks).
    static let emptyRoot = Manifest(entries: []).root

    /// Gives a received file the modification time its writer's file had, so that a file
    /// from 2020 still says 2020.
    private func setModificationTime(_ path: String, to nanoseconds: Int64) {
        guard nanoseconds > 0 else { return }
        _ = disk.setModificationTime(path, nanoseconds: nanoseconds)
    }

    /// A remote change of a file's mode alone (the same content): applied unless the user
    /// changed the mode here since it was recorded.
    private func applyMode(_ mode: UInt16, to path: String, recorded: PathState) {
        guard let now = disk.lstat(path), now.st_mode & 0o777 == mode_t(recorded.mode) else { return }
        expectOwn(path)
        guard disk.chmod(path, mode: mode_t(mode) & ~umaskBits) == 0, let state = state(path, item: recorded.item, root: recorded.root) else { return }
        paths[path] = state
        persistSoon(path, state)
    }

    /// Moves a replaced or removed file into the version store (`FOLDER/.harp-versions/ROOT`)
    /// and indexes it there, so its bytes stay retrievable — here and from every peer. False
    /// (and the file left in place, logged) when its bytes cannot be kept: a delete never
    /// destroys the only copy.
    private func keepVersion(_ path: String, root: ChunkID?) -> Bool {
        expectOwn(path)
        guard let root else { return disk.unlink(path) == 0 }
        _ = disk.mkdir(FolderIndex.versionStore, mode: 0o700)
        let moved = disk.rename(path, in: disk, to: versionPath(root))
        guard moved == 0 else {
            logger.warning("cannot keep the bytes of \(path) in the version store (\(String(cString: strerror(moved)))): the file stays where it is")
            return false
        }
        _ = index(versionPath(root))
        return true
    }

    /// Links a file about to be replaced into the version store (indexed there); false when
    /// the store has that version already or the link fails.
    private func linkVersion(_ path: String, root: ChunkID) -> Bool {
        _ = disk.mkdir(FolderIndex.versionStore, mode: 0o700)
        guard disk.link(path, to: versionPath(root), in: disk) == 0 else { return false }
        _ = index(versionPath(root))
        return true
    }

    /// What the version store holds now, and what retention removed since the start.
    private(set) var versionStore = (files: 0, bytes: Int64(0), prunedFiles: 0, prunedBytes: Int64(0))
    private var lastPrune: ContinuousClock.Instant?

    /// Applies the version store's retention (`VersionRetention`), at most once per
    /// `rescan_interval`.
    private func pruneVersions() {
        let now = ContinuousClock.now
        guard lastPrune.map({ now - $0 >= configuration.rescanInterval.duration }) ?? true else { return }
        lastPrune = now
        var stored: [VersionRetention.Stored] = []
        let fd = disk.open(FolderIndex.versionStore, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        guard fd >= 0, let directory = fdopendir(fd) else {
            if fd >= 0 { close(fd) }
            versionStore.files = 0
            versionStore.bytes = 0
            return
        }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            var info = stat()
            guard let root = ChunkID(hex: name), fstatat(dirfd(directory), name, &info, AT_SYMLINK_NOFOLLOW) == 0,
                  info.st_mode & S_IFMT == S_IFREG else { continue }
            stored.append(.init(root: root, bytes: Int64(info.st_size), storedAt: Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec)))
        }
        closedir(directory)
        var volume = statvfs()
        let total = statvfs(folder, &volume) == 0 ? Int64(volume.f_blocks) * Int64(volume.f_frsize) : Int64.max
        let retention = VersionRetention(keep: configuration.keepVersions, keepFor: Int64(configuration.keepVersionsFor.duration.nanoseconds),
                                         capacity: configuration.versionStoreMax.bytes(of: total))
        let pruned = retention.pruned(stored, ranks: VersionRetention.ranks(view()), now: Int64(Date().timeIntervalSince1970 * 1e9))
        var gone: Set<ChunkID> = []
        for version in pruned where disk.unlink(versionPath(version.root)) == 0 {
            gone.insert(version.root)
            versionStore.prunedFiles += 1
            versionStore.prunedBytes += version.bytes
            try? p2p.folderIndex.forget(versionPath(version.root))
        }
        if !gone.isEmpty { logger.info("the version store's retention removed \(gone.count) version\(gone.count == 1 ? "" : "s")") }
        let left = stored.filter { !gone.contains($0.root) }
        versionStore.files = left.count
        versionStore.bytes = left.reduce(0) { $0 + $1.bytes }
    }

    /// Makes sure the bytes of `root` are here — in the folder, in the version store, or
    /// fetched from a peer into the store — or says why not.
    private func keepForRestore(_ root: ChunkID) async -> String? {
        if root == Self.emptyRoot || paths.values.contains(where: { $0.root == root }) || disk.lstat(versionPath(root)) != nil { return nil }
        let staged = stagingPath(root)
        _ = disk.mkdir(Self.staging, mode: 0o700)
        if case .failed(let failure) = await p2p.fetch(root, into: folder + "/" + staged) {
            return "its bytes are not kept here and no connected peer sent them (\(failure)); the version stores' retention ([crdt] keep_versions) may have removed them everywhere"
        }
        _ = disk.mkdir(FolderIndex.versionStore, mode: 0o700)
        guard disk.rename(staged, in: disk, to: versionPath(root)) == 0 else { return "the fetched bytes could not be stored" }
        _ = index(versionPath(root))
        return nil
    }

    /// Where the bytes of `root` wait before they are renamed into place (relative).
    private func stagingPath(_ root: ChunkID) -> String { Self.staging + "/" + root.description }

    /// A version's place in the store, relative to the folder.
    private func versionPath(_ root: ChunkID) -> String { FolderIndex.versionStore + "/" + root.description }

    /// Where fetched files wait to be renamed into place (relative to the folder; hidden, and
    /// a name no peer can send).
    static let staging = ".harp-staging"

    /// Copies `from` to `to` (both relative, beneath the folder), replacing `to`.
    private func copyFile(_ from: String, to: String) -> Bool {
        let source = disk.open(from, flags: O_RDONLY | O_NOFOLLOW)
        guard source >= 0 else { return false }
        defer { close(source) }
        _ = disk.unlink(to)
        let target = disk.open(to, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
        guard target >= 0 else { return false }
        defer { close(target) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = read(source, &buffer, buffer.count)
            if count == 0 { return fsync(target) == 0 }
            guard count > 0, buffer.withUnsafeBytes({ write(target, $0.baseAddress, count) }) == count else { return false }
        }
    }

    /// Whether the file at `path` is still what `state` recorded (or gone).
    private func unchanged(_ path: String, _ state: PathState) -> Bool {
        guard let now = self.state(path, item: state.item, root: state.root) else { return true }
        return now.inode == state.inode && now.size == state.size && now.mtime == state.mtime
    }

    /// What is at `path` (relative) now, as a record of `item`; nil when nothing is there, or
    /// it is not a regular file or directory (a link is never taken for what it points at).
    private func state(_ path: String, item: ItemID, root: ChunkID?) -> PathState? {
        guard let info = disk.lstat(path) else { return nil }
        return PathState(info, item: item, root: root)
    }

    // MARK: Commands

    /// The folder as the replica shows it, built once per replica generation: a pass while
    /// only content lands reuses it (building it for 20,000 files took 17% of a receiving
    /// node's CPU, twice a pass).
    func view() -> FolderView {
        if let cached = cachedView, cached.generation == replica.generation { return cached.view }
        let view = FolderView(tree: replica.tree, histories: replica.histories)
        cachedView = (replica.generation, view)
        return view
    }

    /// Operations the log keeps (settled moves are not among them).
    var operationsKept: Int { replica.operationCount }

    func recentOperations(_ count: Int) -> [LoggedOperation] { Self.newest(count, of: replica) }

    /// The newest `count` operations `replica` keeps, newest first.
    static func newest(_ count: Int, of replica: Replica) -> [LoggedOperation] {
        Array(replica.allOperations.sorted { $0.operation.timestamp > $1.operation.timestamp }.prefix(count))
    }

    /// A new version of `path` with the content of its version `number` (history only grows).
    /// A deleted file (`ls --deleted`) is restored the same way: the new version is newer than
    /// the delete, so the file comes back where it was, with its deleted directories — not
    /// with what else was deleted with them (`FolderView.shown`).
    func restore(_ path: String, version number: Int) async -> String? {
        let view = view()
        guard let entry = view.entries[path] ?? view.deleted[path], !entry.isDirectory else {
            return "\(path) is not a file in the folder, nor a deleted one (harp storage ls --deleted)"
        }
        guard number >= 1, number <= entry.history.count else { return "\(path) has versions 1 to \(entry.history.count), not \(number)" }
        guard let head = entry.head else { return "\(path) has no content" }
        let old = entry.history[number - 1].version
        // Its bytes must be somewhere first: a head nobody can fetch would be retried forever.
        if let missing = await keepForRestore(old.root) { return "version \(number) of \(path) cannot come back: \(missing)" }
        await commit([.now { .version(.init(timestamp: $0, item: head.item, root: old.root, size: old.size, mtime: old.mtime, base: head.root, mode: old.mode)) }])
        requestWork()
        return nil
    }
}

/// `.harpignore` at the folder's top: one pattern per line (`#` comments), gitignore-style
/// as far as fnmatch goes — a pattern without `/` matches a name at any depth, one with `/`
/// the path from the top.
struct Ignore {
    let patterns: [String]

    init(folder: String) {
        let text = (try? String(contentsOfFile: folder + "/.harpignore", encoding: .utf8)) ?? ""
        patterns = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && !$0.hasPrefix("#") }
    }

    /// Whether `relative` or a directory above it is ignored.
    func covers(_ relative: String) -> Bool {
        guard !patterns.isEmpty else { return false }
        var end = relative.startIndex
        while let slash = relative[end...].firstIndex(of: "/") {
            if matches(String(relative[..<slash])) { return true }
            end = relative.index(after: slash)
        }
        return matches(relative)
    }

    func matches(_ relative: String) -> Bool {
        let name = relative.split(separator: "/").last.map(String.init) ?? relative
        for raw in patterns {
            let pattern = raw.hasSuffix("/") ? String(raw.dropLast()) : raw
            if pattern.contains("/") {
                let anchored = pattern.hasPrefix("/") ? String(pattern.dropFirst()) : pattern
                if fnmatch(anchored, relative, FNM_PATHNAME) == 0 { return true }
            } else if fnmatch(pattern, name, 0) == 0 {
                return true
            }
        }
        return false
    }
}
