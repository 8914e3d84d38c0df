import Dispatch
import Glibc
import HarpKernel
import Synchronization

/// One download: which chunks of a manifest are verified, which peers hold which, and which
/// peer each missing chunk is requested from — the swarm scheduler's state (docs/protocols/
/// p2p.md, "Swarm transfer"). Sessions on any loop ask it what to request next and tell it
/// what arrived; every call is one short critical section.
///
/// A chunk ID that occurs several times in a file is one *slot*: fetched once, written at
/// every offset.
final class Transfer: Sendable {
    let root: ChunkID
    let output: String
    /// The temporary file beside the target (renamed onto it when complete).
    let partialPath: String
    let fd: Int32
    let started = EventLoop.preciseNanos()
    private let state = Mutex(State())
    /// Writes into `fd` in flight, and whether it is about to be closed: the descriptor is
    /// closed only once no session writes into it (a late endgame copy, verified like the
    /// first, may still be landing when the last chunk completes the file), so a write never
    /// meets a closed — or worse, reused — descriptor number.
    private let io = Mutex<(writers: Int, closing: Bool, closed: Bool)>((0, false, false))
    /// Signalled by the last write in flight once `quiesce` has closed the door.
    private let drained = DispatchSemaphore(value: 0)

    struct Slot: Sendable {
        let id: ChunkID
        let length: Int
        let offsets: [Int]
        /// The manifest entry advertised for this slot in have-updates.
        let entry: Int
    }

    enum Status: UInt8, Sendable { case missing, requested, verified }

    enum Outcome: Sendable, Equatable {
        case complete
        /// The file system lacks room for the rest: every download fails so until there is room.
        case noRoom(DiskShortage)
        case failed(String)

        var description: String {
            switch self {
            case .complete: "complete"
            case .noRoom(let shortage): shortage.description
            case .failed(let reason): reason
            }
        }
    }

    struct State: Sendable {
        var manifest: Manifest?
        var slots: [Slot] = []
        var slotOf: [ChunkID: Int] = [:]
        var entrySlot: [Int] = []
        var status: [Status] = []
        var requesters: [Int: [NodeID]] = [:]
        var holders: [NodeID: Bitfield] = [:]
        var complete: Set<NodeID> = []
        var rarity: [Int] = []
        /// Slots each peer said it is fetching right now (from someone): picked last.
        var fetching: [NodeID: Set<Int>] = [:]
        /// Have answers that came before the manifest (entry bitfield bytes; nil = complete).
        var early: [NodeID: [UInt8]?] = [:]
        var inFlight: [NodeID: Int] = [:]
        /// Slots not yet verified, in a random order (ties in rarity are broken by it, so
        /// two downloaders from one origin ask for different chunks and can trade).
        var order: [Int] = []
        var verifiedCount = 0
        var verifiedBytes = 0
        var bytesByPeer: [NodeID: Int] = [:]
        var strikes: [NodeID: Int] = [:]
        var noManifest: Set<NodeID> = []
        var outcome: Outcome?
        /// Those waiting for the outcome (`ended`).
        var waiters: [CheckedContinuation<Outcome, Never>] = []
        var unflushed: [Int] = []
        var unflushedBytes = 0
        var lastFlush = EventLoop.preciseNanos()
        var wasted = 0
        /// Chunks copied from the node's own folder (an older version of the file).
        var localBytes = 0
        /// While the folder is searched for chunks we already hold, nothing is requested.
        var scanningLocally = false
        /// The one peer asked for the whole content (get-whole); the others are asked only if
        /// it cannot send it.
        var wholeFrom: NodeID?
    }

    /// A peer that sent this many chunks that did not hash to their IDs is disconnected and
    /// not asked again for this download.
    static let maximumStrikes = 3

    /// Whether completing syncs the output's directory (the rename is on disk when the fetch
    /// returns). A caller that moves the file on and syncs where it ends up says no: the
    /// metadata sync stages each file, then renames it into the folder and syncs that.
    let syncsDirectory: Bool

    init(root: ChunkID, output: String, fd: Int32, syncsDirectory: Bool = true) {
        self.syncsDirectory = syncsDirectory
        self.root = root
        self.output = output
        partialPath = Transfer.partialPath(for: output)
        self.fd = fd
    }

    /// Registers a write into `fd`; false once the file is being closed.
    func beginWrite() -> Bool {
        io.withLock { io in
            guard !io.closing else { return false }
            io.writers += 1
            return true
        }
    }

    func endWrite() {
        let last = io.withLock { io -> Bool in
            io.writers -= 1
            return io.closing && io.writers == 0
        }
        // The last write a `quiesce` waits for.
        if last { drained.signal() }
    }

    /// Refuses new writes and waits for those in flight (a few milliseconds at most: each is
    /// one chunk into the page cache). Blocks: for the disk worker, never a loop. Called by
    /// one thread at a time (the disk worker), so each signal has exactly one waiter.
    func quiesce() {
        let inFlight = io.withLock { io -> Bool in
            io.closing = true
            return io.writers > 0
        }
        if inFlight { drained.wait() }
    }

    /// Closes `fd` once, after the writes in flight (`quiesce`): 0 or `close`'s -1.
    func closeFile() -> Int32 {
        quiesce()
        return io.withLock { io in
            guard !io.closed else { return 0 }
            io.closed = true
            return Glibc.close(fd)
        }
    }

    /// `dir/.name.harp-partial` beside `output`: same file system, so the rename is atomic.
    static func partialPath(for output: String) -> String {
        let slash = output.lastIndex(of: "/")
        let directory = slash.map { String(output[..<$0]) } ?? "."
        let name = slash.map { String(output[output.index(after: $0)...]) } ?? output
        return directory + "/." + name + ".harp-partial"
    }

    var manifest: Manifest? { state.withLock { $0.manifest } }

    /// The finished file's inode (set just before it is renamed into place): the metadata
    /// sync knows the file by it even if the user moves it the moment it lands.
    let landedInode = Atomic<Int64>(0)
    /// Whether the download has a row in `TransferStore` (to resume it after a kill): only
    /// one of several chunks does. A one-chunk file lands whole or not at all, so a record
    /// would only cost it three transactions (begin, manifest, forget) and resume nothing.
    let recorded = Atomic<Bool>(false)
    var outcome: Outcome? { state.withLock { $0.outcome } }

    /// Installs the manifest (its root already checked) and the slots verified before a
    /// restart. False when a manifest was installed already.
    @discardableResult
    func setManifest(_ manifest: Manifest, verified: Set<Int> = []) -> Bool {
        state.withLock { state in
            guard state.manifest == nil else { return false }
            state.manifest = manifest
            state.scanningLocally = true
            var offset = 0
            for (entry, item) in manifest.entries.enumerated() {
                if let slot = state.slotOf[item.id] {
                    let old = state.slots[slot]
                    state.slots[slot] = Slot(id: old.id, length: old.length, offsets: old.offsets + [offset], entry: old.entry)
                    state.entrySlot.append(slot)
                } else {
                    state.slotOf[item.id] = state.slots.count
                    state.entrySlot.append(state.slots.count)
                    state.slots.append(Slot(id: item.id, length: item.length, offsets: [offset], entry: entry))
                }
                offset += item.length
            }
            state.status = Array(repeating: .missing, count: state.slots.count)
            state.rarity = Array(repeating: 0, count: state.slots.count)
            for slot in verified where slot < state.slots.count {
                state.status[slot] = .verified
                state.verifiedCount += 1
                state.verifiedBytes += state.slots[slot].length * state.slots[slot].offsets.count
            }
            state.order = (0..<state.slots.count).filter { state.status[$0] != .verified }.shuffled()
            for (peer, bitfield) in state.early { Self.addHolder(&state, peer, entries: bitfield) }
            state.early = [:]
            if state.verifiedCount == state.slots.count { state.outcome = nil }
            return true
        }
    }

    var isComplete: Bool { state.withLock { $0.manifest != nil && $0.verifiedCount == $0.slots.count } }

    /// A peer answered a have-query: a bitfield over the manifest's entries, nil = all. A
    /// bitfield of the wrong length is ignored (the peer then holds nothing).
    func peerHas(_ peer: NodeID, entries: [UInt8]?) {
        state.withLock { state in
            if state.manifest == nil { state.early[peer] = entries } else { Self.addHolder(&state, peer, entries: entries) }
        }
    }

    private static func addHolder(_ state: inout State, _ peer: NodeID, entries bytes: [UInt8]?) {
        removeHolder(&state, peer)
        guard let bytes else {
            state.complete.insert(peer)
            for slot in state.slots.indices { state.rarity[slot] += 1 }
            return
        }
        guard let entries = Bitfield(bytes: bytes, count: state.entrySlot.count) else { return }
        var holds = Bitfield(count: state.slots.count)
        for entry in 0..<entries.count where entries[entry] { holds[state.entrySlot[entry]] = true }
        for slot in 0..<holds.count where holds[slot] { state.rarity[slot] += 1 }
        state.holders[peer] = holds
    }

    private static func removeHolder(_ state: inout State, _ peer: NodeID) {
        if state.complete.remove(peer) != nil {
            for slot in state.slots.indices { state.rarity[slot] -= 1 }
        }
        if let holds = state.holders.removeValue(forKey: peer) {
            for slot in 0..<holds.count where holds[slot] { state.rarity[slot] -= 1 }
        }
    }

    /// A have-update: the peer verified these entries since its answer.
    func peerGained(_ peer: NodeID, entries: [Int]) {
        state.withLock { state in
            guard state.manifest != nil, !state.complete.contains(peer) else { return }
            var holds = state.holders[peer] ?? Bitfield(count: state.slots.count)
            for entry in entries where entry >= 0 && entry < state.entrySlot.count {
                let slot = state.entrySlot[entry]
                state.fetching[peer]?.remove(slot)
                if !holds[slot] {
                    holds[slot] = true
                    state.rarity[slot] += 1
                }
            }
            state.holders[peer] = holds
        }
    }

    /// A fetching announcement: the peer will soon hold these entries.
    func peerFetching(_ peer: NodeID, entries: [Int]) {
        state.withLock { state in
            guard state.manifest != nil else { return }
            for entry in entries where entry >= 0 && entry < state.entrySlot.count {
                state.fetching[peer, default: []].insert(state.entrySlot[entry])
            }
        }
    }

    /// Asks `peer` alone for the whole content (a file that may be one chunk).
    func askWhole(from peer: NodeID) {
        state.withLock { $0.wholeFrom = peer }
    }

    /// `peer` answered the get-whole with a one-chunk manifest: the chunk follows unasked.
    /// It counts as held by the peer and requested from it; the chunk's ID, unless verified.
    func expectPushed(from peer: NodeID) -> ChunkID? {
        state.withLock { state in
            guard state.manifest != nil, state.slots.count == 1, state.status[0] != .verified, state.outcome == nil else { return nil }
            Self.addHolder(&state, peer, entries: nil)
            Self.request(&state, slot: 0, from: peer)
            return state.slots[0].id
        }
    }

    /// Whether `peer` was the one asked for the whole content — it could not send it (no
    /// manifest, don't-have, a bad chunk, gone): the other peers are asked now.
    func dropWhole(from peer: NodeID) -> Bool {
        state.withLock { state in
            guard state.wholeFrom == peer, state.outcome == nil else { return false }
            state.wholeFrom = nil
            return true
        }
    }

    func peerLacksManifest(_ peer: NodeID) {
        _ = state.withLock { $0.noManifest.insert(peer) }
    }

    func peersWithoutManifest() -> Set<NodeID> { state.withLock { $0.noManifest } }

    /// The peer disconnected: what it was sending is missing again and it holds nothing.
    func peerGone(_ peer: NodeID) {
        state.withLock { state in
            guard state.manifest != nil else {
                state.early[peer] = nil
                return
            }
            Self.removeHolder(&state, peer)
            state.fetching[peer] = nil
            state.inFlight[peer] = nil
            for (slot, peers) in state.requesters where peers.contains(peer) {
                let rest = peers.filter { $0 != peer }
                state.requesters[slot] = rest.isEmpty ? nil : rest
                if rest.isEmpty, state.status[slot] == .requested { state.status[slot] = .missing }
            }
        }
    }

    /// What to ask `peer` for now, up to `budget` bytes in flight to it: the rarest missing
    /// chunks it holds — among equals those no other downloader announced it is fetching,
    /// then in random order — and in endgame (nothing missing is unrequested) chunks already
    /// requested elsewhere that it could send sooner. Each with the entry to announce.
    func nextRequests(for peer: NodeID, budget: Int) -> [(id: ChunkID, entry: Int)] {
        state.withLock { state in
            guard state.manifest != nil, state.outcome == nil, !state.scanningLocally,
                  state.strikes[peer, default: 0] < Self.maximumStrikes else { return [] }
            var room = budget - state.inFlight[peer, default: 0]
            guard room > 0 else { return [] }
            let all = state.complete.contains(peer)
            let holds = state.holders[peer]
            guard all || holds != nil else { return [] }
            func has(_ slot: Int) -> Bool { all || holds![slot] }
            // Compact the order (verified slots leave it), then pick by rarity.
            state.order.removeAll { state.status[$0] == .verified }
            var picked: [Int] = []
            var candidates: [(rarity: Int, soon: Int, slot: Int)] = []
            var anyMissing = false
            let soon = state.fetching.values.reduce(into: Set<Int>()) { $0.formUnion($1) }
            for slot in state.order where state.status[slot] == .missing {
                anyMissing = true
                if has(slot) { candidates.append((state.rarity[slot], soon.contains(slot) ? 1 : 0, slot)) }
            }
            if !candidates.isEmpty {
                // The offset keeps the random order among equals.
                for candidate in candidates.enumerated().sorted(by: {
                    ($0.element.rarity, $0.element.soon, $0.offset) < ($1.element.rarity, $1.element.soon, $1.offset)
                }) {
                    guard room > 0 else { break }
                    picked.append(candidate.element.slot)
                    room -= state.slots[candidate.element.slot].length
                }
            } else if !anyMissing {
                // Endgame: duplicate the requests with the fewest requesters, two at most.
                let duplicates = state.order.filter { slot in
                    state.status[slot] == .requested && has(slot) && !(state.requesters[slot] ?? []).contains(peer)
                        && (state.requesters[slot]?.count ?? 0) < 2
                }.sorted { (state.requesters[$0]?.count ?? 0) < (state.requesters[$1]?.count ?? 0) }
                for slot in duplicates {
                    guard room > 0 else { break }
                    picked.append(slot)
                    room -= state.slots[slot].length
                }
            }
            for slot in picked { Self.request(&state, slot: slot, from: peer) }
            return picked.map { (state.slots[$0].id, state.slots[$0].entry) }
        }
    }

    /// Whether a chunk that arrived is still wanted (a late endgame duplicate is not), and
    /// where it goes.
    func want(_ id: ChunkID) -> Slot? {
        state.withLock { state in
            guard let slot = state.slotOf[id], state.status[slot] != .verified, state.outcome == nil else { return nil }
            return state.slots[slot]
        }
    }

    /// The slot is requested from `peer` (asked for, or pushed after a get-whole).
    private static func request(_ state: inout State, slot: Int, from peer: NodeID) {
        state.status[slot] = .requested
        state.requesters[slot, default: []].append(peer)
        state.inFlight[peer, default: 0] += state.slots[slot].length
    }

    /// The peer no longer owes this chunk (it arrived, was refused, or was cancelled).
    private static func settle(_ state: inout State, slot: Int, peer: NodeID) {
        guard var peers = state.requesters[slot], let index = peers.firstIndex(of: peer) else { return }
        peers.remove(at: index)
        state.requesters[slot] = peers.isEmpty ? nil : peers
        state.inFlight[peer, default: 0] -= state.slots[slot].length
        if peers.isEmpty, state.status[slot] == .requested { state.status[slot] = .missing }
    }

    struct Verified: Sendable {
        /// Other peers asked for the same chunk (endgame): cancel there.
        var cancels: [NodeID] = []
        /// The manifest entry to announce in have-updates (nil when it was a duplicate).
        var entry: Int?
        var complete = false
        var flush = false
    }

    /// A chunk arrived, verified and written at every offset.
    func verified(_ id: ChunkID, from peer: NodeID, flushAfter bytes: Int = 16 << 20, flushEvery: UInt64 = 250_000_000) -> Verified {
        state.withLock { state in
            var result = Verified()
            guard let slot = state.slotOf[id] else { return result }
            let length = state.slots[slot].length
            state.bytesByPeer[peer, default: 0] += length
            Self.settle(&state, slot: slot, peer: peer)
            guard state.status[slot] != .verified else {
                state.wasted += length
                return result
            }
            state.status[slot] = .verified
            state.verifiedCount += 1
            state.verifiedBytes += length * state.slots[slot].offsets.count
            result.cancels = state.requesters[slot] ?? []
            for other in result.cancels { Self.settle(&state, slot: slot, peer: other) }
            result.entry = state.slots[slot].entry
            state.unflushed.append(slot)
            state.unflushedBytes += length
            let now = EventLoop.preciseNanos()
            result.complete = state.verifiedCount == state.slots.count
            result.flush = result.complete || state.unflushedBytes >= bytes || now &- state.lastFlush >= flushEvery
            return result
        }
    }

    /// The slots still missing, for the local scan.
    func missingSlots() -> [Slot] {
        state.withLock { state in state.slots.indices.filter { state.status[$0] != .verified }.map { state.slots[$0] } }
    }

    /// A chunk found in the node's own folder, verified and written: like `verified`, but
    /// nobody sent it.
    func verifiedLocally(_ id: ChunkID) -> Verified {
        state.withLock { state in
            var result = Verified()
            guard let slot = state.slotOf[id], state.status[slot] != .verified else { return result }
            let length = state.slots[slot].length
            state.status[slot] = .verified
            state.verifiedCount += 1
            state.verifiedBytes += length * state.slots[slot].offsets.count
            state.localBytes += length
            result.entry = state.slots[slot].entry
            state.unflushed.append(slot)
            state.unflushedBytes += length
            result.complete = state.verifiedCount == state.slots.count
            return result
        }
    }

    func finishLocalScan() {
        state.withLock { $0.scanningLocally = false }
    }

    /// Slots verified since the last flush (they become durable once the file is synced).
    func takeUnflushed() -> [Int] {
        state.withLock { state in
            defer {
                state.unflushed = []
                state.unflushedBytes = 0
                state.lastFlush = EventLoop.preciseNanos()
            }
            return state.unflushed
        }
    }

    /// A chunk whose bytes did not hash to its ID: missing again, and a strike against the
    /// sender, who is not asked for it again. Returns the sender's strikes so far.
    func rejected(_ id: ChunkID, from peer: NodeID) -> Int {
        state.withLock { state in
            state.strikes[peer, default: 0] += 1
            guard let slot = state.slotOf[id] else { return state.strikes[peer]! }
            Self.settle(&state, slot: slot, peer: peer)
            Self.forget(&state, slot: slot, peer: peer)
            return state.strikes[peer]!
        }
    }

    /// The peer said it does not have the chunk after all.
    func refused(_ id: ChunkID, by peer: NodeID) {
        state.withLock { state in
            guard let slot = state.slotOf[id] else { return }
            Self.settle(&state, slot: slot, peer: peer)
            Self.forget(&state, slot: slot, peer: peer)
        }
    }

    /// We cancelled our request to the peer.
    func cancelled(_ id: ChunkID, at peer: NodeID) {
        state.withLock { state in
            guard let slot = state.slotOf[id] else { return }
            Self.settle(&state, slot: slot, peer: peer)
        }
    }

    private static func forget(_ state: inout State, slot: Int, peer: NodeID) {
        if state.complete.remove(peer) != nil {
            var holds = Bitfield(count: state.slots.count, set: true)
            holds[slot] = false
            state.holders[peer] = holds
            state.rarity[slot] -= 1
        } else if var holds = state.holders[peer], holds[slot] {
            holds[slot] = false
            state.holders[peer] = holds
            state.rarity[slot] -= 1
        }
    }

    func finish(_ outcome: Outcome) {
        let waiters = state.withLock { state -> [CheckedContinuation<Outcome, Never>] in
            guard state.outcome == nil else { return [] }
            state.outcome = outcome
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(returning: outcome) }
    }

    /// The outcome, once there is one: a completion is an event, not something to poll (a
    /// 50 ms poll was most of a small file's fetch time).
    func ended() async -> Outcome {
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Outcome? in
                if let outcome = state.outcome { return outcome }
                state.waiters.append(continuation)
                return nil
            }
            if let now { continuation.resume(returning: now) }
        }
    }

    /// Where a verified chunk of this download can be read (for peers fetching it too).
    func location(of id: ChunkID) -> (path: String, offset: Int, length: Int)? {
        state.withLock { state in
            guard let slot = state.slotOf[id], state.status[slot] == .verified, state.outcome == nil else { return nil }
            return (partialPath, state.slots[slot].offsets[0], state.slots[slot].length)
        }
    }

    /// The verified entries, for a have answer (nil when the manifest is not known).
    func haveEntries() -> Bitfield? {
        state.withLock { state in
            guard state.manifest != nil else { return nil }
            var entries = Bitfield(count: state.entrySlot.count)
            for (entry, slot) in state.entrySlot.enumerated() where state.status[slot] == .verified { entries[entry] = true }
            return entries
        }
    }

    struct Snapshot: Sendable {
        let size: Int
        let verifiedBytes: Int
        let chunks: Int
        let verifiedChunks: Int
        let bytesByPeer: [NodeID: Int]
        let holders: Int
        let inFlight: Int
        let missingEverywhere: Int
        let wasted: Int
        let localBytes: Int
        let outcome: Outcome?
        let hasManifest: Bool
    }

    func snapshot() -> Snapshot {
        state.withLock { state in
            let missingEverywhere = state.manifest == nil ? 0
                : state.order.filter { state.status[$0] != .verified && state.rarity[$0] == 0 }.count
            return Snapshot(size: state.manifest?.size ?? 0, verifiedBytes: state.verifiedBytes, chunks: state.slots.count,
                            verifiedChunks: state.verifiedCount, bytesByPeer: state.bytesByPeer,
                            holders: Set(state.holders.keys).union(state.complete).count,
                            inFlight: state.inFlight.values.reduce(0, +), missingEverywhere: missingEverywhere,
                            wasted: state.wasted, localBytes: state.localBytes, outcome: state.outcome, hasManifest: state.manifest != nil)
        }
    }
}

/// Whether a download has stopped moving: no chunk verified and none in flight for
/// `patience` (no connected peer holds what is missing). The CLI's `get` and the metadata
/// sync's fetches give up on the same rule.
struct StallWatch {
    let patience: Duration
    private var bytes = -1
    private var since = EventLoop.preciseNanos()

    init(patience: Duration) {
        self.patience = patience
    }

    mutating func stalled(_ snapshot: Transfer.Snapshot, now: UInt64 = EventLoop.preciseNanos()) -> Bool {
        if snapshot.verifiedBytes != bytes || snapshot.inFlight > 0 {
            bytes = snapshot.verifiedBytes
            since = now
            return false
        }
        return now &- since > UInt64(patience.nanoseconds)
    }
}
