import BlockExchange
import Foundation
import HarpTestSupport
@testable import MetadataSync
import Testing

/// Replicas that apply random operations, delivered in random orders, in pieces, twice, and
/// across partitions, end up identical; the tree stays a tree; applying anything again
/// changes nothing. The seed is printed with every failure.
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
    static func randomOperation<G: RandomNumberGenerator>(on replica: inout Replica, known: inout [ItemID], now: UInt64,
                                                           using generator: inout G) {
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
            replica.local(now: now) { .move(.init(timestamp: $0, item: item, parent: parent, name: name, isDirectory: false)) }
            let content = root(&generator)
            replica.local(now: now) { .version(.init(timestamp: $0, item: item, root: content, size: 1, mtime: 0, base: nil)) }
        case 22..<34:
            let item = ItemID.random(using: &generator)
            known.append(item)
            let parent = directory()
            replica.local(now: now) { .move(.init(timestamp: $0, item: item, parent: parent, name: name, isDirectory: true)) }
        case 34..<54:  // move, possibly into its own subtree (skipped then)
            guard let item = pick({ _ in true }) else { return }
            let parent = directory(), placement = placements[item]!
            replica.local(now: now) { .move(.init(timestamp: $0, item: item, parent: parent, name: placement.name, isDirectory: placement.isDirectory)) }
        case 54..<64:  // rename
            guard let item = pick({ _ in true }) else { return }
            let placement = placements[item]!
            replica.local(now: now) { .move(.init(timestamp: $0, item: item, parent: placement.parent, name: name, isDirectory: placement.isDirectory)) }
        case 64..<70:  // delete
            guard let item = pick({ _ in true }) else { return }
            let placement = placements[item]!
            replica.local(now: now) { .move(.init(timestamp: $0, item: item, parent: .trash, name: placement.name, isDirectory: placement.isDirectory)) }
        default:  // write
            guard let item = pick({ !$0.isDirectory }) else { return }
            let base = replica.histories.head(of: item)?.root
            let content = root(&generator)
            replica.local(now: now) { .version(.init(timestamp: $0, item: item, root: content, size: 2, mtime: 0, base: base)) }
        }
    }

    /// Sends what `to` lacks from `from`: shuffled, in one to three pieces, some of it twice,
    /// and sometimes only part of it (the rest comes with a later sync).
    static func sync<G: RandomNumberGenerator>(_ from: Replica, _ to: inout Replica, complete: Bool, using generator: inout G) {
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

    @Test("random operations on 3–5 replicas with reordering, duplicates and partitions converge (≥ 10,000 operations per run)",
          arguments: [(UInt64(20_261_130), 3), (UInt64(7), 4), (UInt64(424_242), 5)])
    func converge(seed: UInt64, replicaCount: Int) throws {
        var generator = SeededGenerator(seed: seed)
        var replicas = (0..<replicaCount).map { Replica(node: Self.node(UInt8($0 + 1))) }
        var offline: Set<Int> = []
        var now: UInt64 = 1_000_000
        var made = 0
        var known: [ItemID] = []
        while made < 10_000 {
            now += UInt64.random(in: 0...3, using: &generator)
            let index = Int.random(in: 0..<replicaCount, using: &generator)
            let before = replicas[index].operationCount
            // Skewed clocks: each replica's own time is off by up to 50 ms.
            Self.randomOperation(on: &replicas[index], known: &known, now: now + UInt64(index * 17 % 50), using: &generator)
            made += replicas[index].operationCount - before
            switch Int.random(in: 0..<100, using: &generator) {
            case 0..<30:
                let a = Int.random(in: 0..<replicaCount, using: &generator), b = Int.random(in: 0..<replicaCount, using: &generator)
                if a != b, !offline.contains(a), !offline.contains(b) { Self.sync(replicas[a], &replicas[b], complete: false, using: &generator) }
            case 30..<32:
                offline.insert(Int.random(in: 0..<replicaCount, using: &generator))  // a partition begins
            case 32..<35:
                if let back = offline.randomElement(using: &generator) { offline.remove(back) }
            default:
                break
            }
        }
        // Everyone meets everyone until nothing is missing.
        for _ in 0..<3 {
            for a in 0..<replicaCount {
                for b in 0..<replicaCount where a != b { Self.sync(replicas[a], &replicas[b], complete: true, using: &generator) }
            }
        }
        let total = replicas[0].operationCount
        #expect(total >= 10_000, "seed \(seed)")
        let reference = FolderView(tree: replicas[0].tree, histories: replicas[0].histories)
        #expect(reference.entries.count > 10, "seed \(seed): a view of \(reference.entries.count) entries tests little")
        for replica in replicas {
            #expect(replica.operationCount == total, "seed \(seed)")
            #expect(replica.tree.placements == replicas[0].tree.placements, "seed \(seed): trees differ")
            #expect(replica.histories == replicas[0].histories, "seed \(seed): histories differ")
            #expect(FolderView(tree: replica.tree, histories: replica.histories) == reference, "seed \(seed): views differ")
            #expect(Self.checkTree(replica) == nil, "seed \(seed): \(Self.checkTree(replica) ?? "")")
        }
        // All at once on a fresh replica, and everything again on an old one: the same state.
        var fresh = Replica(node: Self.node(99))
        fresh.apply(replicas[0].allOperations.shuffled(using: &generator))
        #expect(fresh.tree.placements == replicas[0].tree.placements && fresh.histories == replicas[0].histories, "seed \(seed)")
        var again = replicas[1]
        again.apply(replicas[0].allOperations.shuffled(using: &generator))
        #expect(again.tree == replicas[1].tree && again.histories == replicas[1].histories, "seed \(seed): re-applying changed the state")
        // No path is ever a "conflicted copy": merged names leave one entry per name.
        #expect(!reference.entries.keys.contains { $0.contains("conflict") })
    }
}
