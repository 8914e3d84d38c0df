import BlockExchange
import Foundation
import HarpTestSupport
@testable import MetadataSync
import Testing

/// A few hundred random user actions on three real nodes, stopped and started at random: the
/// nodes end with one tree, the big directory moved around stays whole, no version that was
/// ever on disk long enough to be seen is missing from the histories, every file shows its
/// latest edit, and ignored paths stay the ignoring node's alone. The seed is printed;
/// `HARP_RANDOM_SEED=N` repeats a run's actions (timing still varies).
@Suite("p2p storage: random user actions on real nodes", .serialized)
struct RandomActionsTests {
    static let bigCount = 2000
    static let actions = 250
    /// A write that stays on disk this long is seen by a scan (stable_after is 200 ms).
    static let seenAfter = 1.5

    /// What the test wrote, and whether a scan must have seen it.
    struct Write {
        let node: Int
        let path: String
        /// The file written (its inode: the node may rename it meanwhile).
        let inode: UInt64
        let content: String
        let time: Date
        var overwrittenSoon = false
    }

    final class Run {
        let nodes: [P2PNode]
        var running: [Bool]
        var generator: SeededGenerator
        var writes: [Write] = []
        /// Every action, in order: printed around a lost version, and kept with the logs.
        var events: [(time: Date, node: Int, text: String)] = []
        /// Per node, the names it ignores (`.harpignore`), and the files it made there.
        var ignored: [[String]]
        var ignoredFiles: [(node: Int, path: String, content: String)] = []
        var sharedIgnoredFiles: [(path: String, content: String, ignoringNode: Int)] = []
        var step = 0
        /// When the big directory last moved and a directory was last deleted: a delete and a
        /// move into the deleted directory closer than a scan's delay are ordered by their
        /// stamps, which need not be their order in time — the test keeps them apart.
        var lastBigMove = Date.distantPast, lastDelete = Date.distantPast

        init(nodes: [P2PNode], seed: UInt64) {
            self.nodes = nodes
            running = nodes.map { _ in true }
            generator = SeededGenerator(seed: seed)
            ignored = nodes.map { _ in [] }
        }

        func folder(_ node: Int) -> String { nodes[node].folder }

        /// Every synced path on a node's disk (hidden names aside): path → nil for a directory,
        /// the text for a file.
        func tree(_ node: Int) -> [String: String?] {
            var out: [String: String?] = [:]
            let top = folder(node)
            for case let path as String in FileManager.default.enumerator(atPath: top)?.allObjects ?? [] {
                if path.split(separator: "/").contains(where: { $0.hasPrefix(".") }) { continue }
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: top + "/" + path, isDirectory: &isDirectory) else { continue }
                out[path] = isDirectory.boolValue ? String?.none : String?.some((try? String(contentsOfFile: top + "/" + path, encoding: .utf8)) ?? "?")
            }
            return out
        }

        func isIgnoredName(_ path: String) -> Bool { path.split(separator: "/").contains { $0.hasPrefix("ign-") } }

        /// Where the big directory is on `node` (the directory of big-0000), if anywhere.
        func bigDirectory(_ node: Int) -> String? {
            tree(node).keys.first { $0.hasSuffix("big-0000") }.map { $0.contains("/") ? String($0[..<$0.lastIndex(of: "/")!]) : "" }
        }

        func pick<T>(_ items: [T]) -> T? { items.isEmpty ? nil : items[Int.random(in: 0..<items.count, using: &generator)] }

        func content() -> String {
            "seed step \(step) " + String(repeating: "x", count: Int.random(in: 0...3000, using: &generator)) + "\n"
        }

        func inode(_ node: Int, _ path: String) -> UInt64? {
            (try? FileManager.default.attributesOfItem(atPath: folder(node) + "/" + path))?[.systemFileNumber] as? UInt64
        }

        /// The inodes of the files at or under `path` on `node`.
        func inodes(_ node: Int, under path: String) -> Set<UInt64> {
            var out: Set<UInt64> = []
            if let own = inode(node, path) { out.insert(own) }
            for case let child as String in FileManager.default.enumerator(atPath: folder(node) + "/" + path)?.allObjects ?? [] {
                if let number = inode(node, path + "/" + child) { out.insert(number) }
            }
            return out
        }

        /// Every node's whole log and the run's actions, kept for a failed run (a CI log holds
        /// only what the test prints).
        func keepLogs(seed: UInt64) {
            let directory = NSTemporaryDirectory() + "random-actions-\(seed)-\(Int(Date().timeIntervalSince1970))"
            try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for (index, node) in nodes.enumerated() { try? node.log.write(toFile: directory + "/node\(index).log", atomically: false, encoding: .utf8) }
            let actions = events.map { "\($0.time.timeIntervalSince1970) node \($0.node): \($0.text)" }.joined(separator: "\n")
            try? actions.write(toFile: directory + "/actions.txt", atomically: false, encoding: .utf8)
            print("random actions: the nodes' logs and the actions are in \(directory)")
        }

        /// A write (or append, or truncation) of the file `inode` on `node`: what a scan must
        /// find, unless the file is written or removed again before it could.
        func wrote(_ node: Int, _ path: String, inode: UInt64?, _ text: String) {
            guard let inode else { return }
            touched(node, [inode])
            writes.append(Write(node: node, path: path, inode: inode, content: text, time: Date()))
            events.append((Date(), node, "step \(step): wrote \(path) (inode \(inode), \(text.utf8.count) bytes)"))
        }

        /// Earlier writes on `node` of these files that were replaced or removed before a scan
        /// could see them are not expected in the histories.
        func touched(_ node: Int, _ inodes: Set<UInt64>) {
            let now = Date()
            for index in writes.indices where writes[index].node == node && now.timeIntervalSince(writes[index].time) < RandomActionsTests.seenAfter {
                if inodes.contains(writes[index].inode) { writes[index].overwrittenSoon = true }
            }
        }

        /// One random action on a random running node. The node changes its folder too: an
        /// action that meets a path it just moved or removed fails, as it would for a user,
        /// and is recorded as nothing.
        func act() throws {
            step += 1
            if Int.random(in: 0..<100, using: &generator) < 4 { return try stopOrStart() }
            guard let node = pick(running.indices.filter { running[$0] }) else { return try stopOrStart() }
            do {
                try change(node)
            } catch let error as NSError where error.domain == NSPOSIXErrorDomain || error.domain == NSCocoaErrorDomain {
                return
            }
        }

        func change(_ node: Int) throws {
            let top = folder(node)
            let disk = tree(node)
            let big = bigDirectory(node)
            // What random actions may touch: not the ignored directories, not the big directory's files.
            let files = disk.filter { $0.value != nil && !isIgnoredName($0.key) && !$0.key.contains("big-") }.map(\.key).sorted()
            let directories = [""] + disk.filter { $0.value == nil && !isIgnoredName($0.key) }.map(\.key).sorted()
            let outsideBig = directories.filter { big == nil || !($0 == big! || $0.hasPrefix(big! + "/")) }
            func full(_ path: String) -> String { top + "/" + path }
            func join(_ directory: String, _ name: String) -> String { directory.isEmpty ? name : directory + "/" + name }
            switch Int.random(in: 0..<100, using: &generator) {
            case 0..<16:  // create
                guard let directory = pick(outsideBig) else { return }
                let path = join(directory, "f\(step).txt"), text = content()
                try text.write(toFile: full(path), atomically: false, encoding: .utf8)
                wrote(node, path, inode: inode(node, path), text)
            case 16..<36:  // edit in place
                guard let path = pick(files) else { return }
                let text = content(), before = inode(node, path)
                try text.write(toFile: full(path), atomically: false, encoding: .utf8)
                wrote(node, path, inode: before, text)
            case 36..<46:  // append
                guard let path = pick(files), let handle = FileHandle(forUpdatingAtPath: full(path)) else { return }
                let added = "appended at step \(step)\n"
                handle.seekToEndOfFile()
                handle.write(Data(added.utf8))
                handle.seek(toFileOffset: 0)
                let text = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
                var info = stat()
                fstat(handle.fileDescriptor, &info)
                handle.closeFile()
                wrote(node, path, inode: UInt64(info.st_ino), text)
            case 46..<51:  // truncate to empty
                guard let path = pick(files) else { return }
                let before = inode(node, path)
                guard truncate(full(path), 0) == 0 else { return }
                wrote(node, path, inode: before, "")
            case 51..<61:  // rename or move a file
                guard let path = pick(files), let directory = pick(outsideBig) else { return }
                let target = join(directory, "r\(step).txt")
                try FileManager.default.moveItem(atPath: full(path), toPath: full(target))
                events.append((Date(), node, "step \(step): moved \(path) to \(target)"))
            case 61..<68:  // a new directory
                guard let directory = pick(outsideBig) else { return }
                try FileManager.default.createDirectory(atPath: full(join(directory, "d\(step)")), withIntermediateDirectories: false)
            case 68..<80:  // move a directory (the big one often) into a new directory
                let movable = directories.filter { !$0.isEmpty }
                guard let source = Bool.random(using: &generator) ? big.flatMap({ $0.isEmpty ? nil : $0 }) : pick(movable) else { return }
                let movesBig = big.map { $0 == source || $0.hasPrefix(source + "/") } ?? false
                if movesBig && Date().timeIntervalSince(lastDelete) < RandomActionsTests.seenAfter { return }
                guard let parent = pick(directories.filter { $0 != source && !$0.hasPrefix(source + "/") }) else { return }
                let holder = join(parent, "m\(step)")
                try FileManager.default.createDirectory(atPath: full(holder), withIntermediateDirectories: false)
                let target = holder + "/" + String(source.split(separator: "/").last!)
                try FileManager.default.moveItem(atPath: full(source), toPath: full(target))
                events.append((Date(), node, "step \(step): moved directory \(source) to \(target)"))
                if movesBig { lastBigMove = Date() }
            case 80..<90:  // delete a file
                guard let path = pick(files) else { return }
                let gone = inodes(node, under: path)
                try FileManager.default.removeItem(atPath: full(path))
                events.append((Date(), node, "step \(step): deleted \(path)"))
                touched(node, gone)
            case 90..<95:  // delete a directory (never one the big directory is in, on any node)
                let holders = Set((0..<nodes.count).compactMap { bigDirectory($0) }.flatMap { path in
                    path.split(separator: "/").indices.map { path.split(separator: "/")[...$0].joined(separator: "/") }
                })
                guard let path = pick(directories.filter { !$0.isEmpty && !holders.contains($0) }),
                      Date().timeIntervalSince(lastBigMove) >= RandomActionsTests.seenAfter else { return }
                let gone = inodes(node, under: path)
                try FileManager.default.removeItem(atPath: full(path))
                events.append((Date(), node, "step \(step): deleted directory \(path)"))
                touched(node, gone)
                lastDelete = Date()
            default:  // ignore a new name on this node; another node writes there
                guard ignored.joined().count < 3 else { return }
                let name = "ign-\(step)"
                let existing = (try? String(contentsOfFile: top + "/.harpignore", encoding: .utf8)) ?? ""
                try (existing + name + "/\n").write(toFile: top + "/.harpignore", atomically: true, encoding: .utf8)
                ignored[node].append(name)
                try FileManager.default.createDirectory(atPath: full(name), withIntermediateDirectories: false)
                try "only on \(node)\n".write(toFile: full(name + "/local.txt"), atomically: false, encoding: .utf8)
                ignoredFiles.append((node, name + "/local.txt", "only on \(node)\n"))
                if let other = pick(running.indices.filter { running[$0] && $0 != node }) {
                    try FileManager.default.createDirectory(atPath: folder(other) + "/" + name, withIntermediateDirectories: true)
                    try "from \(other)\n".write(toFile: folder(other) + "/" + name + "/remote.txt", atomically: false, encoding: .utf8)
                    sharedIgnoredFiles.append((name + "/remote.txt", "from \(other)\n", node))
                }
            }
        }

        func stopOrStart() throws {
            let stopped = running.indices.filter { !running[$0] }
            if let node = pick(stopped), stopped.count > 1 || Bool.random(using: &generator) {
                try nodes[node].start()
                running[node] = true
                events.append((Date(), node, "step \(step): started"))
            } else if let node = pick(running.indices.filter { running[$0] }), running.filter({ $0 }).count > 1 {
                try nodes[node].stop()
                running[node] = false
                events.append((Date(), node, "step \(step): stopped"))
            }
        }

        /// Trees as two nodes must agree on: without what either ignores.
        func comparable(_ node: Int, with other: Int) -> [String: String?] {
            let names = Set(ignored[node] + ignored[other])
            return tree(node).filter { entry in !entry.key.split(separator: "/").contains { names.contains(String($0)) } }
        }

        var converged: Bool {
            (1..<nodes.count).allSatisfy { comparable(0, with: $0) == comparable($0, with: 0) }
                && (1..<nodes.count).allSatisfy { comparable(1, with: $0) == comparable($0, with: 1) }
        }
    }

    @Test("250 random actions on 3 nodes stopped and started at random: one tree, the big directory whole, no version lost, latest edits shown, ignores kept")
    func randomActions() throws {
        let seed = SeededGenerator.seed(for: "random actions")
        let nodes = try (0..<3).map { _ in
            let node = try P2PNode()
            node.plugins = ["p2p", "crdt"]
            node.extraConfig = "[crdt]\nrescan_interval = \"1s\"\nstable_after = \"200ms\""
            return node
        }
        defer { for node in nodes { node.remove() } }
        try P2PNode.mesh(nodes)
        for node in nodes { try node.start() }
        for node in nodes { try node.waitConnected(to: nodes.filter { $0 !== node }) }
        let run = Run(nodes: nodes, seed: seed)
        try FileManager.default.createDirectory(atPath: nodes[0].folder + "/big", withIntermediateDirectories: false)
        for index in 0..<Self.bigCount {
            try "big \(index)\n".write(toFile: nodes[0].folder + String(format: "/big/big-%04d", index), atomically: false, encoding: .utf8)
        }
        try FolderSafetyTests.waitFor("the big directory on every node", timeout: 180) {
            (0..<3).allSatisfy { node in run.tree(node).keys.filter { $0.hasPrefix("big/big-") }.count == Self.bigCount }
        }
        for _ in 0..<Self.actions {
            try run.act()
            usleep(UInt32.random(in: 0...250_000, using: &run.generator))
        }
        let last = Date()
        for node in nodes.indices where !run.running[node] {
            try nodes[node].start()
            run.running[node] = true
        }
        // Converged: one tree on every node, still one a second later.
        var convergedAt: Date?
        let deadline = Date().addingTimeInterval(180)
        while Date() < deadline {
            if run.converged {
                if convergedAt == nil { convergedAt = Date() }
                usleep(1_500_000)
                if run.converged { break }
                convergedAt = nil
            }
            usleep(200_000)
        }
        if convergedAt == nil {
            // Diagnostics: the versions no peer could send.
            var roots: Set<String> = []
            for node in nodes {
                for line in node.log.split(separator: "\n") where line.contains("no connected peer sent any of ") {
                    if let range = line.range(of: "no connected peer sent any of ") { roots.insert(String(line[range.upperBound...].prefix(64))) }
                }
            }
            for (index, node) in nodes.enumerated() {
                guard let loaded = try? OperationLog(readingOnly: node.dir + "/metadata.sqlite").load() else { continue }
                let replica = Replica(node: try NodeIdentity.load(from: node.dir), wall: loaded.wall, counter: loaded.counter, settled: loaded.settled,
                                      operations: loaded.operations)
                let view = FolderView(tree: replica.tree, histories: replica.histories)
                for root in roots.sorted() {
                    for (item, versions) in replica.histories.versions where versions.contains(where: { $0.root.description == root }) {
                        let path = view.entries.first { $0.value.items.contains(item) }?.key ?? view.deleted.first { $0.value.items.contains(item) }?.key ?? "?"
                        print("UNFETCHABLE node \(index) root \(root.prefix(12)) item \(item) path \(path): " + versions.map { "\($0.timestamp) \($0.root.description.prefix(8)) mtime \($0.mtime / 1_000_000) base \($0.base?.description.prefix(8) ?? "-")" }.joined(separator: " | "))
                        if index == 0 {
                            let name = String(path.split(separator: "/").last ?? "?")
                            for (other, peer) in nodes.enumerated() {
                                for line in peer.log.split(separator: "\n") where line.contains(name) { print("UNFETCHABLE-LOG node \(other): \(line.prefix(700))") }
                            }
                        }
                    }
                }
            }
        }
        guard let convergedAt else {
            run.keepLogs(seed: seed)
            let trees = (0..<3).map { node in run.tree(node).keys.sorted().joined(separator: " ") }
            Issue.record("seed \(seed): not one tree within 180 s of the last action\n\(trees.joined(separator: "\n---\n"))")
            return
        }
        print("random actions: seed \(seed): converged \(String(format: "%.1f", convergedAt.timeIntervalSince(last))) s after the last action")

        // The big directory moved around: whole, in one place, on every node.
        let bigPlaces = (0..<3).map { run.bigDirectory($0) }
        #expect(Set(bigPlaces).count == 1 && bigPlaces[0] != nil, "seed \(seed): \(bigPlaces)")
        for node in 0..<3 {
            let tree = run.tree(node), place = bigPlaces[0].map { $0.isEmpty ? "" : $0 + "/" } ?? ""
            let bigFiles = tree.filter { $0.key.contains("big-") }
            #expect(bigFiles.count == Self.bigCount && (0..<Self.bigCount).allSatisfy { tree[place + String(format: "big-%04d", $0)] == "big \($0)\n" },
                    "seed \(seed): node \(node) has \(bigFiles.count) big files, not all under \(place)")
        }
        // Ignored paths: the ignoring node's files untouched and not elsewhere; what others wrote
        // there kept everywhere but on the ignoring node.
        for (node, path, content) in run.ignoredFiles {
            #expect(run.tree(node)[path] == .some(content), "seed \(seed): node \(node)'s ignored \(path)")
            for other in 0..<3 where other != node && !run.ignored[other].contains(String(path.split(separator: "/")[0])) {
                #expect(run.tree(other)[path] == nil, "seed \(seed): \(path) left node \(node)")
            }
        }
        for (path, content, ignoring) in run.sharedIgnoredFiles {
            #expect(run.tree(ignoring)[path] == nil, "seed \(seed): \(path) reached the node that ignores it")
            for other in 0..<3 where other != ignoring { #expect(run.tree(other)[path] == .some(content), "seed \(seed): \(path) on node \(other)") }
        }

        // Every write a scan could see is a version in the histories; every file shows its latest.
        for node in nodes { try node.stop() }
        let loaded = try OperationLog(readingOnly: nodes[1].dir + "/metadata.sqlite").load()
        let replica = Replica(node: try NodeIdentity.load(from: nodes[1].dir), wall: loaded.wall, counter: loaded.counter, settled: loaded.settled,
                              operations: loaded.operations)
        let roots = Set(replica.histories.versions.values.flatMap { $0.map(\.root) })
        let scratch = nodes[1].dir + "/written"
        var lost: [String] = []
        for write in run.writes where !write.overwrittenSoon && !run.isIgnoredName(write.path) {
            try write.content.write(toFile: scratch, atomically: false, encoding: .utf8)
            let root = try FileChunker.chunk(path: scratch).manifest.root
            if !roots.contains(root) {
                lost.append("\(write.path) on node \(write.node) (\(write.content.prefix(20))…)")
                for (index, node) in nodes.enumerated() {
                    let other = try OperationLog(readingOnly: node.dir + "/metadata.sqlite").load()
                    let has = other.operations.contains { if case .version(let v) = $0.operation { return v.root == root } else { return false } }
                    print("LOST \(root.description.prefix(12)) in node \(index)'s log: \(has); vector \(other.operations.count) ops, written at \(write.time.timeIntervalSince1970)")
                }
                // What happened on that node from 2 s before the write to 10 s after: a later
                // write of the same file, a stop, or no pass at all tells a test limit from a loss.
                for event in run.events where event.node == write.node
                    && event.time.timeIntervalSince(write.time) > -2 && event.time.timeIntervalSince(write.time) < 10 {
                    print("LOST context node \(event.node) at \(event.time.timeIntervalSince1970): \(event.text)")
                }
                let name = String(write.path.split(separator: "/").last!)
                for (index, node) in nodes.enumerated() {
                    for line in node.log.split(separator: "\n") where line.contains(name) || line.contains(root.description.prefix(12)) {
                        print("LOST \(name) \(root.description.prefix(12)) node \(index): \(line.prefix(400))")
                    }
                }
            }
        }
        if !lost.isEmpty { run.keepLogs(seed: seed) }
        #expect(lost.isEmpty, "seed \(seed): \(lost.count) versions missing from the histories: \(lost.prefix(10))")
        let view = FolderView(tree: replica.tree, histories: replica.histories)
        for entry in view.entries.values where !entry.isDirectory {
            guard let head = entry.head else { continue }
            #expect(entry.history.allSatisfy { $0.version.mtime <= head.mtime }, "seed \(seed): \(entry.path) shows an older edit than its newest")
        }
    }
}
