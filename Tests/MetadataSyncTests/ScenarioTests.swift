import BlockExchange
import HarpTestSupport
@testable import MetadataSync
import Testing

/// The cases the metadata model exists for, each on two replicas that change things while
/// apart and then sync both ways.
@Suite("metadata scenarios")
struct ScenarioTests {
    var generator = SeededGenerator(seed: 11)
    var a = Replica(node: ConvergenceTests.node(1))
    var b = Replica(node: ConvergenceTests.node(2))
    var now: UInt64 = 5_000

    mutating func content() -> ChunkID { ConvergenceTests.root(&generator) }

    /// Creates an item on `a` and gives it to `b`.
    @discardableResult
    mutating func create(_ name: String, in parent: ItemID = .root, directory: Bool = false) -> ItemID {
        let item = ItemID.random(using: &generator)
        now += 1
        a.local(now: now) { .move(.init(timestamp: $0, item: item, parent: parent, name: name, isDirectory: directory)) }
        if !directory {
            let root = content()
            a.local(now: now) { .version(.init(timestamp: $0, item: item, root: root, size: 1, mtime: 0, base: nil)) }
        }
        syncBoth()
        return item
    }

    enum Side { case a, b }

    mutating func local(_ side: Side, at time: UInt64, _ make: (HLCTimestamp) -> TreeOperation) {
        switch side {
        case .a: a.local(now: time, make)
        case .b: b.local(now: time, make)
        }
    }

    mutating func move(on side: Side, _ item: ItemID, to parent: ItemID, name: String, directory: Bool, at time: UInt64) {
        local(side, at: time) { .move(.init(timestamp: $0, item: item, parent: parent, name: name, isDirectory: directory)) }
    }

    mutating func write(on side: Side, _ item: ItemID, at time: UInt64) -> ChunkID {
        let root = content(), base = (side == .a ? a : b).histories.head(of: item)?.root
        local(side, at: time) { .version(.init(timestamp: $0, item: item, root: root, size: 3, mtime: 0, base: base)) }
        return root
    }

    mutating func syncBoth() {
        b.apply(a.missing(for: b.vector))
        a.apply(b.missing(for: a.vector))
    }

    func view(_ replica: Replica) -> FolderView { FolderView(tree: replica.tree, histories: replica.histories) }

    mutating func converged() -> FolderView {
        syncBoth()
        #expect(view(a) == view(b))
        #expect(a.tree.placements == b.tree.placements)
        return view(a)
    }

    @Test("one directory moved to two places at once ends in one of them, once")
    mutating func concurrentMoves() {
        let x = create("x", directory: true), y = create("y", directory: true), d = create("d", directory: true)
        create("f", in: d)
        move(on: .a, d, to: x, name: "d", directory: true, at: now + 10)
        move(on: .b, d, to: y, name: "d", directory: true, at: now + 20)  // later: wins
        let paths = Set(converged().entries.keys)
        #expect(paths == ["x", "y", "y/d", "y/d/f"])
    }

    @Test("deleted files and directories are listed where they were, with what was under them and their histories")
    mutating func deletedPaths() {
        let project = create("project", directory: true), source = create("src", in: project, directory: true)
        create("main.c", in: source)
        create("notes.txt", in: project)
        let loose = create("loose.txt")
        move(on: .a, project, to: .trash, name: "project", directory: true, at: now + 10)
        // Moved into the directory while it was being deleted elsewhere (earlier than the
        // delete): gone with it, and restorable from where it went.
        move(on: .b, loose, to: project, name: "loose.txt", directory: false, at: now + 5)
        let view = converged()
        #expect(view.entries.isEmpty)
        #expect(Set(view.deleted.keys) == ["project", "project/src", "project/src/main.c", "project/notes.txt", "project/loose.txt"],
                "\(view.deleted.keys.sorted())")
        #expect(view.deleted["project"]?.isDirectory == true)
        #expect(view.deleted["project/loose.txt"]?.head != nil && view.deleted["project/src/main.c"]?.history.count == 1)
    }

    @Test("/a into /b on one node, /b into /a on the other: one move is skipped, nothing lost, no cycle")
    mutating func moveCycle() {
        let first = create("a", directory: true), second = create("b", directory: true)
        move(on: .a, first, to: second, name: "a", directory: true, at: now + 10)
        move(on: .b, second, to: first, name: "b", directory: true, at: now + 20)  // would make a cycle after a's
        let paths = Set(converged().entries.keys)
        #expect(paths == ["b", "b/a"])
        #expect(ConvergenceTests.checkTree(a) == nil)
    }

    @Test("a directory renamed on one node while a file inside is edited on the other")
    mutating func renameWhileEditing() {
        let d = create("docs", directory: true), f = create("f.txt", in: d)
        move(on: .a, d, to: .root, name: "papers", directory: true, at: now + 10)
        let edited = write(on: .b, f, at: now + 5)
        let view = converged()
        #expect(Set(view.entries.keys) == ["papers", "papers/f.txt"])
        #expect(view.entries["papers/f.txt"]?.head?.root == edited)
    }

    @Test("one file edited on two nodes while apart: one path, both versions, the later is the head, the other concurrent")
    mutating func concurrentEdits() {
        let f = create("report.odt")
        let first = write(on: .a, f, at: now + 10)
        let second = write(on: .b, f, at: now + 20)
        let entry = converged().entries["report.odt"]
        let history = entry?.history ?? []
        #expect(history.count == 3 && history.map(\.number) == [1, 2, 3])
        #expect(history.last?.version.root == second && history.last?.head == true)
        #expect(history[1].version.root == first && !history[1].concurrent)
        #expect(history[2].concurrent, "written from the original, not from the other edit")
        #expect(view(a).entries.count == 1, "no conflict copy")
    }

    @Test("delete, then a later edit elsewhere: the file comes back where it was, its history whole")
    mutating func deleteThenEdit() {
        let d = create("d", directory: true), f = create("f", in: d)
        move(on: .a, f, to: .trash, name: "f", directory: false, at: now + 10)
        let edited = write(on: .b, f, at: now + 20)
        let view = converged()
        #expect(view.entries["d/f"]?.head?.root == edited)
        #expect(view.entries["d/f"]?.history.count == 2)
    }

    @Test("an edit, then a later delete: the file is gone, its bytes stay in the history")
    mutating func editThenDelete() {
        let f = create("f")
        let edited = write(on: .b, f, at: now + 10)
        move(on: .a, f, to: .trash, name: "f", directory: false, at: now + 20)
        let view = converged()
        #expect(view.entries["f"] == nil)
        #expect(a.histories.versions[f]?.map(\.root).contains(edited) == true)
    }

    @Test("an edit after the delete of a directory above the file brings the file back with its directories, not their other files")
    mutating func editInsideDeletedDirectory() {
        let project = create("project", directory: true), source = create("src", in: project, directory: true)
        let main = create("main.c", in: source)
        create("notes.txt", in: project)
        move(on: .a, project, to: .trash, name: "project", directory: true, at: now + 10)
        let edited = write(on: .b, main, at: now + 20)
        let view = converged()
        #expect(Set(view.entries.keys) == ["project", "project/src", "project/src/main.c"], "\(view.entries.keys.sorted())")
        #expect(view.entries["project/src/main.c"]?.head?.root == edited)
        #expect(Set(view.deleted.keys) == ["project/notes.txt"], "the other file stays deleted, and listed: \(view.deleted.keys.sorted())")
    }

    @Test("an edit older than the delete of a directory above it stays deleted; newer than an inner delete but older than the outer, too")
    mutating func editBeforeDelete() {
        let outer = create("outer", directory: true), inner = create("inner", in: outer, directory: true)
        let file = create("f.txt", in: inner)
        move(on: .a, inner, to: .trash, name: "inner", directory: true, at: now + 10)
        move(on: .a, outer, to: .trash, name: "outer", directory: true, at: now + 30)
        _ = write(on: .b, file, at: now + 20)  // after inner's delete, before outer's
        #expect(converged().entries.isEmpty)
        _ = write(on: .b, file, at: now + 40)  // after both
        #expect(Set(converged().entries.keys) == ["outer", "outer/inner", "outer/inner/f.txt"])
    }

    @Test("a file moved into a directory deleted before the move is kept, and the directory comes back; a directory moved in comes back whole")
    mutating func moveIntoDeletedDirectory() {
        let project = create("project", directory: true)
        create("old.txt", in: project)
        let loose = create("loose.txt"), folder = create("folder", directory: true)
        create("inside.txt", in: folder)
        move(on: .a, project, to: .trash, name: "project", directory: true, at: now + 10)
        move(on: .b, loose, to: project, name: "loose.txt", directory: false, at: now + 20)
        move(on: .b, folder, to: project, name: "folder", directory: true, at: now + 21)
        let view = converged()
        #expect(Set(view.entries.keys) == ["project", "project/loose.txt", "project/folder", "project/folder/inside.txt"],
                "\(view.entries.keys.sorted())")
        #expect(Set(view.deleted.keys) == ["project/old.txt"])
    }

    @Test("whatever order two replicas hear of deletes and edits in nested directories, their views are one")
    mutating func revivalIsOrderFree() {
        var items: [ItemID] = [.root]
        for index in 0..<30 { items.append(create("n\(index)", in: items[Int.random(in: 0..<items.count, using: &generator)], directory: index % 3 != 2)) }
        var time = now
        for _ in 0..<40 {
            time += UInt64.random(in: 1...5, using: &generator)
            let item = items[Int.random(in: 1..<items.count, using: &generator)]
            let side: Side = Bool.random(using: &generator) ? .a : .b
            if (side == .a ? a : b).tree.placements[item]?.isDirectory == true {
                move(on: side, item, to: .trash, name: "gone", directory: true, at: time)
            } else {
                _ = write(on: side, item, at: time)
            }
        }
        let merged = converged()
        var other = Replica(node: ConvergenceTests.node(3))
        for logged in a.allOperations.shuffled(using: &generator) { other.apply([logged]) }
        #expect(view(other) == merged)
    }

    @Test("a change found later is stamped when it happened: not past now, after what was recorded, never a timestamp already held")
    mutating func foundChanges() {
        let node = ConvergenceTests.node(1), ms: Int64 = 1_000_000
        func stamp(_ happened: Int64, after floor: HLCTimestamp?, now: UInt64) -> HLCTimestamp {
            ChangeTime.stamp(happened: happened, after: floor, now: now, node: node)
        }
        let floor = HLCTimestamp(wall: 1_000, counter: 5, node: ConvergenceTests.node(2))
        #expect(stamp(1_500 * ms, after: floor, now: 2_000).wall == 1_500)
        #expect(stamp(9_999 * ms, after: floor, now: 2_000).wall == 2_000, "never past now")
        let early = stamp(10 * ms, after: floor, now: 2_000)
        #expect(early > floor && early.wall == 1_001, "never at or before what was recorded")
        #expect(early.counter >= ChangeTime.foundCounters)
        #expect(stamp(1_500 * ms + 300, after: nil, now: 2_000) < stamp(1_500 * ms + 700, after: nil, now: 2_000),
                "two changes in one millisecond keep their order")
        // Two found versions of one item with one time: two versions.
        let f = create("f")
        let same = stamp(Int64(now + 50) * ms, after: a.histories.head(of: f)?.timestamp, now: now + 100)
        for _ in 0..<2 {
            let root = content()
            a.local(stamped: same) { .version(.init(timestamp: $0, item: f, root: root, size: 1, mtime: 0, base: nil)) }
        }
        #expect(a.histories.versions[f]?.count == 3)
        #expect(a.clock.wall >= now + 50, "the clock moves past what it stamped")
    }

    @Test("recent conflicts: concurrent edits, a delete a later edit overruled, an edit a delete removed moments later — not one long before")
    mutating func conflicts() {
        let edited = create("edited.txt"), kept = create("kept.txt"), lost = create("lost.txt"), old = create("old.txt")
        _ = write(on: .a, edited, at: now + 10)
        _ = write(on: .b, edited, at: now + 20)
        move(on: .a, kept, to: .trash, name: "kept.txt", directory: false, at: now + 30)
        _ = write(on: .b, kept, at: now + 40)
        _ = write(on: .b, lost, at: now + 50)
        move(on: .a, lost, to: .trash, name: "lost.txt", directory: false, at: now + 60)
        _ = write(on: .b, old, at: now + 70)
        move(on: .a, old, to: .trash, name: "old.txt", directory: false, at: now + 70 + 400_000)
        let found = Conflict.recent(in: converged(), since: now, window: 300_000)
        #expect(found.map(\.path) == ["lost.txt", "kept.txt", "edited.txt"], "\(found)")
        #expect(found.map(\.kind) == [.editDeleted, .deleteOverruled, .concurrentEdit])
        #expect(found[0].won.node == a.node && found[0].lost.node == b.node)
        #expect(Conflict.recent(in: view(a), since: now + 100, window: 300_000).isEmpty, "older than listed")
    }

    @Test("the version store keeps each file's newest replaced versions, none past their age, all within the cap (oldest out first)")
    mutating func versionRetention() {
        let f = create("f"), g = create("g")
        var roots: [ChunkID] = []
        for step in 1...4 { roots.append(write(on: .a, f, at: now + UInt64(step))) }  // f: create + 4 = 5 versions, 4 replaced
        let deleted = a.histories.head(of: g)!.root
        move(on: .a, g, to: .trash, name: "g", directory: false, at: now + 10)
        let ranks = VersionRetention.ranks(view(a))
        #expect(ranks[roots[3]] == nil, "the head is what the folder shows")
        #expect(ranks[roots[2]] == 0 && ranks[roots[0]] == 2 && ranks[deleted] == 0)
        let second: Int64 = 1_000_000_000
        func stored(_ root: ChunkID, bytes: Int64 = 100, at seconds: Int64) -> VersionRetention.Stored { .init(root: root, bytes: bytes, storedAt: seconds * second) }
        let store = [stored(roots[0], at: 1), stored(roots[1], at: 2), stored(roots[2], at: 3), stored(deleted, bytes: 1000, at: 4)]
        let byCount = VersionRetention(keep: 2, keepFor: 3600 * second, capacity: 1 << 40).pruned(store, ranks: ranks, now: 10 * second)
        #expect(byCount.map(\.root) == [roots[0]], "f's third newest replaced version goes")
        let byAge = VersionRetention(keep: 10, keepFor: 7 * second, capacity: 1 << 40).pruned(store, ranks: ranks, now: 10 * second)
        #expect(byAge.map(\.root) == [roots[0], roots[1]], "stored more than 7 s ago")
        let byRoom = VersionRetention(keep: 10, keepFor: 3600 * second, capacity: 1100).pruned(store, ranks: ranks, now: 10 * second)
        #expect(byRoom.map(\.root) == [roots[0], roots[1]], "the oldest go until 1,100 bytes are left")
    }

    @Test("two files made with one name on two nodes are one path; two directories, one directory with both children")
    mutating func sameNames() {
        let fileA = ItemID.random(using: &generator), fileB = ItemID.random(using: &generator)
        let dirA = ItemID.random(using: &generator), dirB = ItemID.random(using: &generator)
        let rootA = content(), rootB = content()
        a.local(now: now + 1) { .move(.init(timestamp: $0, item: fileA, parent: .root, name: "notes", isDirectory: false)) }
        a.local(now: now + 1) { .version(.init(timestamp: $0, item: fileA, root: rootA, size: 1, mtime: 0, base: nil)) }
        b.local(now: now + 2) { .move(.init(timestamp: $0, item: fileB, parent: .root, name: "notes", isDirectory: false)) }
        b.local(now: now + 2) { .version(.init(timestamp: $0, item: fileB, root: rootB, size: 1, mtime: 0, base: nil)) }
        a.local(now: now + 3) { .move(.init(timestamp: $0, item: dirA, parent: .root, name: "photos", isDirectory: true)) }
        b.local(now: now + 4) { .move(.init(timestamp: $0, item: dirB, parent: .root, name: "photos", isDirectory: true)) }
        let one = ItemID.random(using: &generator), two = ItemID.random(using: &generator)
        a.local(now: now + 5) { .move(.init(timestamp: $0, item: one, parent: dirA, name: "1.jpg", isDirectory: false)) }
        b.local(now: now + 6) { .move(.init(timestamp: $0, item: two, parent: dirB, name: "2.jpg", isDirectory: false)) }
        let view = converged()
        #expect(Set(view.entries.keys) == ["notes", "photos", "photos/1.jpg", "photos/2.jpg"])
        #expect(view.entries["notes"]?.history.map(\.version.root) == [rootA, rootB])
        #expect(view.entries["notes"]?.history.last?.concurrent == true)
        #expect(view.entries["photos"]?.items.count == 2)
    }

    @Test("the hybrid clock never goes back, passes what it hears, and flags what is too far ahead")
    func clock() {
        var clock = HybridLogicalClock(node: ConvergenceTests.node(1))
        let first = clock.tick(now: 100), second = clock.tick(now: 90)  // the wall clock stepped back
        #expect(first < second && second.wall == 100 && second.counter == 1)
        clock.observe(HLCTimestamp(wall: 500, counter: 7, node: ConvergenceTests.node(2)))
        let third = clock.tick(now: 200)
        #expect(third.wall == 500 && third.counter == 8)
        let ahead = HLCTimestamp(wall: 1_000_000, counter: 0, node: ConvergenceTests.node(2))
        #expect(HybridLogicalClock.isTooFarAhead(ahead, now: 600_000, maxSkew: 300_000))
        #expect(!HybridLogicalClock.isTooFarAhead(ahead, now: 700_000, maxSkew: 300_000))
        // Equal wall and counter: the node ID orders them, the same way everywhere.
        let x = HLCTimestamp(wall: 1, counter: 0, node: ConvergenceTests.node(1)), y = HLCTimestamp(wall: 1, counter: 0, node: ConvergenceTests.node(2))
        #expect(x < y && !(y < x))
    }

    @Test("[crdt] keys are validated with the key, the value and what is allowed")
    func configuration() throws {
        let node = try P2PNode()
        defer { node.remove() }
        let storage = "[storage]\ndir = \"\(node.dir)\"\nfolder = \"\(node.folder)\"\n"
        for (text, expected) in [("max_clock_skew = \"10ms\"", "crdt.max_clock_skew"), ("rescan_interval = \"1ms\"", "crdt.rescan_interval"),
                                 ("stable_after = \"2h\"", "crdt.stable_after"), ("stable_after = \"soon\"", "crdt.stable_after")] {
            let result = try HarpProcess.run(["config", "check"], config: storage + "[crdt]\n\(text)\n")
            #expect(result.status != 0 && result.stderr.contains(expected), "\(text): \(result.stderr)")
        }
        let good = try HarpProcess.run(["config", "check"], config: storage + "[crdt]\nmax_clock_skew = \"1m\"\n")
        #expect(good.status == 0 && good.stdout.contains("max_clock_skew = \"1m\""), "\(good.stdout) \(good.stderr)")
    }
}

@Suite("metadata sync frames")
struct ReportFrameTests {
    @Test("a replica report round-trips; every truncation and 20,000 random bodies are refused or decode, never crash")
    func reports() {
        var generator = SeededGenerator(seed: 64)
        let nodes = (1...4).map { ConvergenceTests.node(UInt8($0)) }
        var reports = ReplicaReports(node: nodes[0], peers: [nodes[1]])
        reports.merge(.init(replicas: Set(nodes), vectors: [nodes[2]: [nodes[0]: 7, nodes[3]: 1 << 40]]))
        let table = reports.table(own: [nodes[0]: 12])
        let body = ReplicaReports.encode(table)
        #expect((try? ReplicaReports.decode(body)) == table)
        #expect(table.replicas == Set(nodes) && table.vectors[nodes[0]] == [nodes[0]: 12])
        // A report merged again, and an older one, change nothing: sequences only grow.
        var again = reports
        again.merge(.init(replicas: [], vectors: [nodes[2]: [nodes[0]: 3]]))
        #expect(again == reports)
        for length in 0..<body.count { #expect((try? ReplicaReports.decode(Array(body.prefix(length)))) == nil, "\(length) bytes") }
        #expect((try? ReplicaReports.decode(body + [0])) == nil)
        var decoded = 0
        for _ in 0..<20_000 {
            var mutated = body
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                mutated[Int.random(in: 0..<mutated.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            if (try? ReplicaReports.decode(mutated)) != nil { decoded += 1 }
        }
        #expect(decoded < 20_000, "a count byte changed must break the layout sometimes")
        // Counts over the limit are refused before anything is read for them.
        #expect((try? ReplicaReports.decode([0xff, 0xff])) == nil)
    }
}

extension ReportFrameTests {
    @Test("a settled-state part round-trips; every truncation and 5,000 random mutations are refused or decode, never crash")
    func settledParts() throws {
        var generator = SeededGenerator(seed: 66)
        let nodes = (1...3).map { ConvergenceTests.node(UInt8($0)) }
        var settled = Replica.Settled()
        settled.floor = [nodes[0]: 40, nodes[1]: 7]
        var items: [ItemID] = []
        for index in 0..<50 {
            let item = ItemID.random(using: &generator)
            items.append(item)
            settled.placements[item] = .init(parent: index == 0 ? .root : items[0], name: "n\(index)", isDirectory: index % 5 == 0,
                                             at: HLCTimestamp(wall: 500 + UInt64(index), counter: 1, node: nodes[2]))
            if index % 7 == 0 {
                settled.deletions[item] = .init(was: .init(parent: .root, name: "was\(index)", isDirectory: false,
                                                           at: HLCTimestamp(wall: 900, counter: 0, node: nodes[0])),
                                                at: HLCTimestamp(wall: 1_000 + UInt64(index), counter: 0, node: nodes[1]))
            }
        }
        var replica = Replica(node: nodes[0])
        let version = replica.local(now: 2_000) { .version(.init(timestamp: $0, item: items[1], root: ConvergenceTests.root(&generator), size: 3, mtime: 0, base: nil)) }
        let parts = settledFrames(settled, operations: [version], clock: replica.clock)
        #expect(parts.count == 1)
        let part = try #require(decodeSettledFrame(parts[0]))
        #expect(part.index == 0 && part.total == 1 && part.operations == [version])
        #expect(part.settled.placements == settled.placements && part.settled.deletions == settled.deletions && part.settled.floor == settled.floor)
        for length in 0..<parts[0].count { #expect(decodeSettledFrame(Array(parts[0].prefix(length))) == nil, "\(length) bytes") }
        for _ in 0..<5_000 {
            var mutated = parts[0]
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                mutated[Int.random(in: 0..<mutated.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            _ = decodeSettledFrame(mutated)
        }
        #expect(decodeSettledFrame([0, 0, 0, 0, 1, 0, 0, 0, 1]) == nil, "index must be below total")
    }
}

/// A settled state as the frames a node sends (`SyncMessage.settled`), and one frame back.
func settledFrames(_ settled: Replica.Settled, operations: [LoggedOperation], clock: HybridLogicalClock) -> [[UInt8]] {
    SyncMessage.SettledPart.split(settled, operations: operations, clock: clock).map { SyncMessage.settled($0).frame.body }
}

func decodeSettledFrame(_ body: [UInt8]) -> SyncMessage.SettledPart? {
    guard case .settled(let part)? = try? SyncMessage.decode(type: SyncMessage.settledType, body: body) else { return nil }
    return part
}
