import BlockExchange
import Foundation
import HarpTestSupport
@testable import MetadataSync
import Testing

/// Replicas that apply random operations, delivered in random orders, in pieces, twice, and
/// across partitions, end up identical; the tree stays a tree; applying anything again
/// changes nothing; dropping moves below the causally stable point (settling, with the
/// reports each replica heard) changes nothing either. The seed is printed with every failure.
@Suite("metadata convergence")
struct ConvergenceTests {
    static let names = ["a", "b", "c", "d", "e", "f", "g", "h"]

    static func node(_ number: UInt8) -> NodeID { NodeID(bytes: [number] + Array(repeating: 0, count: 31)) }

    static func root<G: RandomNumberGenerator>(_ generator: inout G) -> ChunkID {
        ChunkID(bytes: (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) })
    }

    /// One random local operation on `replica`'s current tree. `known` holds every ID any
    /// replica created, in creation order (a deterministic order to pick from: a dictionary's
    /// is not); an ID this replica has not heard of, or that is deleted, is passed over.
    @discardableResult
    static func randomOperation<G: RandomNumberGenerator>(on replica: inout Replica, known: inout [ItemID], now: UInt64,
                                                           using generator: inout G) -> [LoggedOperation] {
        var made: [LoggedOperation] = []
        let placements = replica.tree.placements
        func pick(_ wanted: (ReplicatedTree.Placement) -> Bool) -> ItemID? {
            guard !known.isEmpty else { return nil }
            for _ in 0..<8 {
                let id = known[Int.random(in: 0..<known.count, using: &generator)]
                if let placement = placements[id], placement.parent != .trash, wanted(placement) { return id }
            }
            return nil
        }
        func directory() -> ItemID { pick { $0.isDirectory } ?? .root }
        let name = names.randomElement(using: &generator)!
        switch Int.random(in: 0..<100, using: &generator) {
        case 0..<22:  // create a file, with its first content
            let item = ItemID.random(using: &generator)
            known.append(item)
            let parent = directory()
            made.append(replica.local(now: now) { .move(.init(timestamp: $0, item: item, parent: parent, name: name, isDirectory: false)) })
            let content = root(&generator)
            made.append(replica.local(now: now) { .version(.init(timestamp: $0, item: item, root: content, size: 1, mtime: 0, base: nil)) })
        case 22..<34:
            let item = ItemID.random(using: &generator)
            known.append(item)
            let parent = directory()
            made.append(replica.local(now: now) { .move(.init(timestamp: $0, item: item, parent: parent, name: name, isDirectory: true)) })
        case 34..<54:  // move, possibly into its own subtree (skipped then)
            guard let item = pick({ _ in true }) else { return made }
            let parent = directory(), placement = placements[item]!
            made.append(replica.local(now: now) { .move(.init(timestamp: $0, item: item, parent: parent, name: placement.name, isDirectory: placement.isDirectory)) })
        case 54..<64:  // rename
            guard let item = pick({ _ in true }) else { return made }
            let placement = placements[item]!
            made.append(replica.local(now: now) { .move(.init(timestamp: $0, item: item, parent: placement.parent, name: name, isDirectory: placement.isDirectory)) })
        case 64..<70:  // delete
            guard let item = pick({ _ in true }) else { return made }
            let placement = placements[item]!
            made.append(replica.local(now: now) { .move(.init(timestamp: $0, item: item, parent: .trash, name: placement.name, isDirectory: placement.isDirectory)) })
        default:  // write
            guard let item = pick({ !$0.isDirectory }) else { return made }
            let base = replica.histories.head(of: item)?.root
            let content = root(&generator)
            made.append(replica.local(now: now) { .version(.init(timestamp: $0, item: item, root: content, size: 2, mtime: 0, base: base)) })
        }
        return made
    }

    /// Sends what `to` lacks from `from`: shuffled, in one to three pieces, some of it twice,
    /// and sometimes only part of it (the rest comes with a later sync). `to` hears `from`'s
    /// report first, as a node does on connect, and settles what it can afterwards.
    static func sync<G: RandomNumberGenerator>(_ from: Replica, _ to: inout Replica, table: ReplicaReports.Table, reports: inout ReplicaReports,
                                               recorded: inout Replica.Settled, complete: Bool, using generator: inout G) {
        reports.merge(table)
        var missing = from.missing(for: to.vector).shuffled(using: &generator)
        if !complete, missing.count > 1, Bool.random(using: &generator) {
            missing = Array(missing.prefix(Int.random(in: 1..<missing.count, using: &generator)))
        }
        let duplicates = from.allOperations.shuffled(using: &generator).prefix(Int.random(in: 0...3, using: &generator))
        var batch = missing + duplicates
        batch.shuffle(using: &generator)
        let pieces = Int.random(in: 1...3, using: &generator)
        let size = max(1, (batch.count + pieces - 1) / pieces)
        for start in stride(from: 0, to: batch.count, by: size) { to.apply(Array(batch[start..<min(start + size, batch.count)])) }
        // What OperationLog.settle records of it, for a restart.
        guard let (settlement, _) = to.settle(reports) else { return }
        recorded.placements.merge(settlement.placements) { $1 }
        for (item, deletion) in settlement.deletions { recorded.deletions[item] = deletion }
        recorded.floor = to.floor
    }

    static func checkTree(_ replica: Replica) -> String? {
        for (item, placement) in replica.tree.placements {
            var current = placement.parent, steps = 0
            while current != .root && current != .trash, let next = replica.tree.placements[current] {
                if current == item { return "a cycle through \(item)" }
                current = next.parent
                steps += 1
                if steps > replica.tree.placements.count { return "an endless parent chain from \(item)" }
            }
        }
        return nil
    }

    /// `chain`: each replica talks to its two neighbours only (a – b – c – d – e); the ends
    /// learn of each other through the reports relayed in between.
    @Test("random operations on 3–5 replicas with reordering, duplicates and partitions converge (≥ 10,000 operations per run)",
          arguments: [(UInt64(20_261_130), 3, false), (UInt64(7), 4, false), (UInt64(424_242), 5, true)])
    func converge(seed: UInt64, replicaCount: Int, chain: Bool) throws {
        var generator = SeededGenerator(seed: seed)
        var replicas = (0..<replicaCount).map { Replica(node: Self.node(UInt8($0 + 1))) }
        func peers(_ index: Int) -> [Int] { chain ? [index - 1, index + 1].filter { (0..<replicaCount).contains($0) } : (0..<replicaCount).filter { $0 != index } }
        var reports = (0..<replicaCount).map { index in ReplicaReports(node: replicas[index].node, peers: peers(index).map { replicas[$0].node }) }
        var recorded = Array(repeating: Replica.Settled(), count: replicaCount)
        func sync(_ a: Int, _ b: Int, complete: Bool) {
            Self.sync(replicas[a], &replicas[b], table: reports[a].table(own: replicas[a].vector), reports: &reports[b],
                      recorded: &recorded[b], complete: complete, using: &generator)
        }
        // Every operation, applied at once and never settled: what the replicas must agree with.
        var shadow = Replica(node: Self.node(99))
        var offline: Set<Int> = []
        var now: UInt64 = 1_000_000
        var made = 0
        var known: [ItemID] = []
        while made < 10_000 {
            now += UInt64.random(in: 0...3, using: &generator)
            let index = Int.random(in: 0..<replicaCount, using: &generator)
            // Skewed clocks: each replica's own time is off by up to 50 ms.
            let new = Self.randomOperation(on: &replicas[index], known: &known, now: now + UInt64(index * 17 % 50), using: &generator)
            shadow.apply(new)
            made += new.count
            switch Int.random(in: 0..<100, using: &generator) {
            case 0..<30:
                let a = Int.random(in: 0..<replicaCount, using: &generator), b = peers(a).randomElement(using: &generator)!
                if !offline.contains(a), !offline.contains(b) { sync(a, b, complete: false) }
            case 30..<32:
                offline.insert(Int.random(in: 0..<replicaCount, using: &generator))  // a partition begins
            case 32..<35:
                if let back = offline.randomElement(using: &generator) { offline.remove(back) }
            default:
                break
            }
        }
        // Every pair of peers meets until nothing is missing (and everyone has heard of it).
        for _ in 0..<replicaCount + 2 {
            for a in 0..<replicaCount {
                for b in peers(a) { sync(a, b, complete: true) }
            }
        }
        #expect(made >= 10_000 && shadow.operationCount == made, "seed \(seed)")
        let reference = FolderView(tree: shadow.tree, histories: shadow.histories)
        #expect(reference.entries.count > 10, "seed \(seed): a view of \(reference.entries.count) entries tests little")
        for (index, replica) in replicas.enumerated() {
            #expect(replica.vector == shadow.vector, "seed \(seed)")
            #expect(replica.tree.placements == shadow.tree.placements, "seed \(seed): trees differ")
            #expect(replica.histories == shadow.histories, "seed \(seed): histories differ")
            #expect(FolderView(tree: replica.tree, histories: replica.histories) == reference, "seed \(seed): views differ")
            #expect(Self.checkTree(replica) == nil, "seed \(seed): \(Self.checkTree(replica) ?? "")")
            // Settling dropped most moves, and no move ever arrived below what had settled.
            #expect(replica.lateMoves == 0, "seed \(seed): \(replica.lateMoves) moves arrived below the settled point")
            #expect(replica.settledMoves > shadow.tree.moveCount / 2, "seed \(seed): \(replica.settledMoves) of \(shadow.tree.moveCount) moves settled")
            // A restart: the settled state as recorded, then the operations kept.
            let restarted = Replica(node: replica.node, wall: replica.clock.wall, counter: replica.clock.counter, settled: recorded[index],
                                    operations: replica.allOperations.shuffled(using: &generator))
            #expect(restarted.vector == replica.vector && restarted.floor == replica.floor, "seed \(seed)")
            #expect(restarted.tree.placements == replica.tree.placements && restarted.histories == replica.histories, "seed \(seed)")
            #expect(FolderView(tree: restarted.tree, histories: restarted.histories) == reference, "seed \(seed): a restarted replica's view differs")
        }
        // A replica that joins now: the moves it needs are settled everywhere, so it gets the
        // operations still kept and a peer's settled state (through its wire form).
        // The state arrives first, the kept operations after it (or the other way round: both work).
        var late = Replica(node: Self.node(97))
        #expect(replicas[0].lacksSettled(late.vector), "seed \(seed): nothing settled, nothing to test")
        let below = replicas[0].allOperations.filter { $0.sequence <= recorded[0].floor[$0.origin] ?? 0 }
        let parts = settledFrames(recorded[0], operations: below, clock: replicas[0].clock)
        let decoded = try parts.shuffled(using: &generator).map { try #require(decodeSettledFrame($0)) }
        #expect(decoded.allSatisfy { $0.total == parts.count })
        let (received, operations) = SyncMessage.SettledPart.assemble(decoded)
        let clock = HLCTimestamp(wall: replicas[0].clock.wall, counter: replicas[0].clock.counter, node: replicas[0].node)
        #expect(late.install(received, operations: operations, clock: clock) != nil)
        late.apply(replicas[0].missing(for: late.vector).shuffled(using: &generator))
        #expect(late.vector == shadow.vector && !replicas[0].lacksSettled(late.vector), "seed \(seed)")
        #expect(FolderView(tree: late.tree, histories: late.histories) == reference, "seed \(seed): a late replica's view differs")
        #expect(late.install(received, operations: operations, clock: clock) == nil, "a replica with settled state of its own takes none")
        // All at once on a fresh replica, and everything again on an old one: the same state.
        var fresh = Replica(node: Self.node(98))
        fresh.apply(shadow.allOperations.shuffled(using: &generator))
        #expect(fresh.tree.placements == replicas[0].tree.placements && fresh.histories == replicas[0].histories, "seed \(seed)")
        var again = replicas[1]
        again.apply(shadow.allOperations.shuffled(using: &generator))
        #expect(again.tree == replicas[1].tree && again.histories == replicas[1].histories, "seed \(seed): re-applying changed the state")
        // No path is ever a "conflicted copy": merged names leave one entry per name.
        #expect(!reference.entries.keys.contains { $0.contains("conflict") })
    }
}
