import BlockExchange
import CoreMetrics
import CShims
import Foundation
import Glibc
import HarpKernel
import Logging

extension MetadataNode {
    // MARK: Peers

    func connected(_ link: PeerLink) {
        links[link.peer] = link
        retryFailedFetches()
        link.send(SyncMessage.report(reports.table(own: durableVector)))
    }

    func report() {
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

    func refuse(_ refusal: SyncRefusal, from link: PeerLink) {
        Counter(label: "harp_sync_refused_total", dimensions: [("reason", refusal.reason)]).increment()
        logger.warning("refused a frame of peer \(link.peer): \(refusal)")
        link.penalize(reason: refusal.description)
    }

    /// One part of a peer's settled state: staged on disk until every part is in (memory stays
    /// bounded whatever the count), then checked and taken — only by a node that has settled
    /// nothing itself (`Replica.install`).
    func receivedSettled(_ part: SyncMessage.SettledPart, body: [UInt8], from peer: NodeID) async throws {
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
    func accept(_ batch: [LoggedOperation], from peer: NodeID?) async throws(SyncRefusal) {
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
    func appended(_ snapshot: [NodeID: UInt64]) {
        guard !appendFailed else { return }
        durableVector.merge(snapshot) { max($0, $1) }
    }

    /// Sends this node's settled state to a peer whose vector lacks settled moves: a node that
    /// joined the folder after they were dropped (no peer can send them as operations now).
    func sendSettled(to peer: NodeID) {
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
    func install(_ settled: Replica.Settled, operations below: [LoggedOperation], clock: HLCTimestamp,
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
    func check(_ settled: Replica.Settled, clock: HLCTimestamp) throws(SyncRefusal) {
        if let problem = ReplicatedTree.problem(in: settled.placements) { throw .settled(problem.description) }
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
    func settle() async {
        guard !settlingFailed, let (settlement, dropped) = replica.settle(reports) else { return }
        do {
            try await log.settle(settlement, dropped: dropped, floor: replica.floor, chains: replica.floorChains)
        } catch {
            settlingFailed = true
            logger.error("cannot record settled operations: \(error); settling stops until this node restarts")
        }
        logger.debug("settled \(settlement.moves.count) moves; \(replica.operationCount) operations kept")
    }

    func tooFarAhead(_ logged: LoggedOperation, now: UInt64) -> Bool {
        HybridLogicalClock.isTooFarAhead(logged.operation.timestamp, now: now,
                                         maxSkew: UInt64(configuration.maxClockSkew.duration.nanoseconds / 1_000_000))
    }

    func releaseHeldBack() {
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
    func commit(_ changes: [LocalChange]) async {
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
}
