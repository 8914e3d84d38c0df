import BlockExchange
import CoreMetrics
import CShims
import Foundation
import Glibc
import HarpKernel
import Logging

/// One node's metadata sync: the replica, the folder it mirrors, and its peers. An actor: peer
/// messages, scans and materialization take turns; the folder work itself (`work`) runs one
/// pass at a time — scan the folder for local changes, then make the folder match the view —
/// so the node never mistakes a file it is writing for a change of the user's.
///
/// This file holds its state and its running (start, passes, stop); each concern is a file of
/// its own: `+Peers` (the sync handler: frames, settled states, commits), `+Scan` (the folder
/// into operations), `+Materialize` (the view into the folder), `+Fetching` (content in the
/// background), `+VersionStore` (replaced bytes and their retention), `+Commands` (the CLI).
actor MetadataNode {
    let folder: String
    let stateDirectory: String
    let configuration: MetadataConfiguration
    let log: OperationLog
    let p2p: BlockExchangePlugin
    let logger: Logger
    /// The node's identity key: it signs the operations this node makes (`OperationChain`).
    let key: Ed25519.PrivateKey
    var replica: Replica
    /// What each synced path is on disk (relative paths), as last seen or written.
    var paths: [String: PathState]
    var links: [NodeID: PeerLink] = [:]
    /// Every replica of the folder this node knows of, and their vectors (kept while a peer is
    /// away: an old one only settles less).
    var reports: ReplicaReports
    /// The vector as far as the log on disk has it — what peers are told, since they may
    /// drop moves on the strength of it. Each append, once written, makes the vector as it
    /// stood right after its operations durable (appends reach the disk in order). After a
    /// failed append it stops for good: what that append held is not on disk.
    var durableVector: [NodeID: UInt64]
    var appendFailed = false
    /// Set when recording a settlement failed: memory has dropped moves the disk still holds,
    /// so settling more would leave a restart replaying old moves over newer settled ones.
    var settlingFailed = false
    /// Peers sent this node's settled state (they lacked settled moves), once per connection.
    var sentSettled: Set<NodeID> = []
    var working = false
    /// `stop()` waiting for the pass in progress to end.
    var passEndWaiters: [CheckedContinuation<Void, Never>] = []
    var workAgain = false
    /// Remote operations stamped too far ahead of our clock, kept until time catches up.
    var heldBack: [LoggedOperation] = []
    /// Recorded paths not found on disk, and since when (ns): deleted once gone long enough.
    var missingSince: [String: Int64] = [:]
    /// What the last scan's walk saw (materialization's "is something there?" for paths it
    /// has no record of; a file made after the walk is never replaced: new files land with
    /// a rename that does not replace).
    var lastWalk: [String: DiskEntry] = [:]
    var cachedView: (generation: Int, view: FolderView)?
    var watcher: FolderWatcher?
    var generator = SystemRandomNumberGenerator()
    /// The clock as the node started: past everything it held when it stopped.
    let startedAt: HLCTimestamp
    /// The folder, for every change this node makes to it (`ConfinedDirectory`).
    let disk: ConfinedDirectory
    /// The process's umask: a received file's mode is the sender's less these bits.
    let umaskBits: mode_t
    /// When a fetch last found no room (logged once a minute).
    var lastNoRoom: ContinuousClock.Instant?
    /// Paths the folder could not take, logged once each.
    var refusedPaths: Set<String> = []
    /// Paths that are neither files nor directories here (symbolic links): not synced, and
    /// never taken for deleted — what the peers have there stays. Logged once each.
    var foreignPaths: Set<String> = []

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

    // Kept by the sections in MetadataNode+*.swift (stored properties live here).
    /// Landed files' records not written yet (`persistSoon`).
    var unpersisted: [String: PathState?] = [:]
    /// The content each path of the last pass waits for (by root: one fetch per root).
    var wanted: [ChunkID: (path: String, head: TreeOperation.Version, over: PathState?)] = [:]
    var inFlight: Set<ChunkID> = []
    /// The last pass's fetches in order, and the first not started yet.
    var queued: [(path: String, head: TreeOperation.Version)] = []
    var next = 0
    /// The replica's generation when the last pass set `wanted`.
    var wantedGeneration = 0
    /// Roots whose fetch failed: not tried again before `until` (the wait doubles, to a minute).
    var failedFetches: [ChunkID: (until: ContinuousClock.Instant, wait: Duration, path: String, reason: String)] = [:]
    /// Files put in place in the last 10 s, and their sizes (the rate `harp storage status` shows).
    var landings: [(at: ContinuousClock.Instant, bytes: Int)] = []
    var lastPrune: ContinuousClock.Instant?
    /// What the version store holds now, and what retention removed since the start.
    var versionStore = (files: 0, bytes: Int64(0), prunedFiles: 0, prunedBytes: Int64(0))

    // MARK: Running

    func start() {
        sweepStaging()
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

    var stopped = false
    var isRunning: Bool { !stopped }

    /// Whether what changed while the node was stopped is committed; peers' frames wait for
    /// it (`scan`: those changes are stamped after the clock at start, past every move a peer
    /// may have settled — until the node applies a peer's operations).
    var firstPassDone = false
    var firstScanBegan: ContinuousClock.Instant?
    var awaitingFirstPass: [CheckedContinuation<Void, Never>] = []

    func firstPass() async {
        guard !firstPassDone else { return }
        await withCheckedContinuation { awaitingFirstPass.append($0) }
    }

    func finishFirstPass() {
        firstPassDone = true
        for waiting in awaitingFirstPass { waiting.resume() }
        awaitingFirstPass = []
    }

    /// The folder's own modification time (ns): when a name at its top last changed.
    func folderModified() -> Int64? {
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

    func work() async {
        repeat {
            workAgain = false
            releaseHeldBack()
            let began = ContinuousClock.now
            let nextLook = await scan()
            let unstable = nextLook != nil
            let scanned = ContinuousClock.now
            // What the node found after a stop is all recorded once a scan finds nothing in
            // flight, or one ran `stable_after` after the first (a path found missing waits
            // that long before it is a delete) — 10 s at most: a file written all the time must
            // not keep the peers waiting (a delete found later is stamped when found).
            if firstScanBegan == nil { firstScanBegan = began }
            if !unstable || began - firstScanBegan! >= min(configuration.stableAfter.duration, .seconds(10)) { finishFirstPass() }
            await materialize()
            logger.debug("pass: scan \((scanned - began).nanoseconds / 1_000_000) ms, materialize \((ContinuousClock.now - scanned).nanoseconds / 1_000_000) ms")
            pruneVersions()
            if let wait = nextLook {
                // Something is still being written: look again once it has settled.
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
    func resumePassEndWaiters() {
        let waiters = passEndWaiters
        passEndWaiters.removeAll()
        for waiter in waiters { waiter.resume() }
    }

}
