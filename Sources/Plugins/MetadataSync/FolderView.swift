import BlockExchange

/// What the folder shows for a replica: paths, with the rules that keep it free of conflict
/// copies (docs/protocols/p2p.md, "Metadata"):
///
/// - a deleted item (under TRASH) comes back where it was when a version of it is newer than
///   the delete (delete vs. edit: the larger timestamp decides);
/// - two files with one parent and one name are one path whose history merges both, in
///   timestamp order; two such directories are one directory with the union of children;
/// - a version whose base is not its predecessor's root is marked concurrent.
public struct FolderView: Equatable, Sendable {
    public struct HistoryEntry: Equatable, Sendable {
        public let number: Int
        public let version: TreeOperation.Version
        public let concurrent: Bool
        public let head: Bool
    }

    public struct Entry: Equatable, Sendable {
        public let path: String
        public let isDirectory: Bool
        /// The items shown at this path (more than one when same-named ones merged).
        public let items: [ItemID]
        public let history: [HistoryEntry]
        /// A deleted entry's delete (of it, or of the directory above it that went).
        public var deletion: HLCTimestamp?
        public var head: TreeOperation.Version? { history.last?.version }
    }

    public private(set) var entries: [String: Entry]
    /// Deleted files and directories, by the path they had when they were deleted, with their
    /// histories (`harp storage ls --deleted`, `history`, `restore`).
    public let deleted: [String: Entry]
    /// Paths shown although a directory above them (or they) were deleted — a later change
    /// overruled the delete — with that delete's timestamp.
    public private(set) var overruled: [String: HLCTimestamp] = [:]

    public init(tree: ReplicatedTree, histories: FileHistories) {
        let deletions = tree.deletions()
        let (placements, overruledItems) = Self.shown(tree: tree, deletions: deletions, histories: histories)
        var children: [ItemID: [ItemID]] = [:]
        for (item, placement) in placements { children[placement.parent, default: []].append(item) }

        var entries: [String: Entry] = [:]
        func walk(_ directories: [ItemID], path: String, depth: Int) {
            guard depth < 4096 else { return }
            let members = directories.flatMap { children[$0] ?? [] }
            let byName = Dictionary(grouping: members) { placements[$0]!.name }
            for (name, items) in byName {
                let childPath = path.isEmpty ? name : path + "/" + name
                let directories = items.filter { placements[$0]!.isDirectory }.sorted()
                if !directories.isEmpty {
                    entries[childPath] = Entry(path: childPath, isDirectory: true, items: directories, history: [], deletion: nil)
                    walk(directories, path: childPath, depth: depth + 1)
                } else {
                    let files = items.sorted()
                    let versions = files.flatMap { histories.versions[$0] ?? [] }.sorted { $0.timestamp < $1.timestamp }
                    var history: [HistoryEntry] = []
                    for (index, version) in versions.enumerated() {
                        let concurrent = index > 0 && version.base != versions[index - 1].root
                        history.append(HistoryEntry(number: index + 1, version: version, concurrent: concurrent, head: index == versions.count - 1))
                    }
                    entries[childPath] = Entry(path: childPath, isDirectory: false, items: files, history: history, deletion: nil)
                }
            }
        }
        walk([.root], path: "", depth: 0)
        self.entries = entries

        // Deleted items where they were: each item in the trash under its parent's path then
        // (live, or deleted too), and everything that was under it.
        var livePaths: [ItemID: String] = [:]
        for entry in entries.values { for item in entry.items { livePaths[item] = entry.path } }
        for (item, deletion) in overruledItems {
            if let path = livePaths[item] { overruled[path] = max(overruled[path] ?? deletion, deletion) }  // (same names merge)
        }
        var formerPaths: [ItemID: String] = [:]
        func formerPath(_ item: ItemID, depth: Int) -> String? {
            if item == .root { return "" }
            if let path = livePaths[item] ?? formerPaths[item] { return path }
            guard depth < 4096, let deletion = deletions[item], tree.placements[item]?.parent == .trash,
                  let parent = formerPath(deletion.was.parent, depth: depth + 1) else { return nil }
            let path = parent.isEmpty ? deletion.was.name : parent + "/" + deletion.was.name
            formerPaths[item] = path
            return path
        }
        var treeChildren: [ItemID: [ItemID]] = [:]
        for (item, placement) in tree.placements { treeChildren[placement.parent, default: []].append(item) }
        var byPath: [String: [ItemID]] = [:]
        var deletedAt: [String: HLCTimestamp] = [:]
        func collect(_ item: ItemID, at path: String, deletion: HLCTimestamp, depth: Int) {
            byPath[path, default: []].append(item)
            deletedAt[path] = max(deletedAt[path] ?? deletion, deletion)
            guard depth < 4096 else { return }
            for child in treeChildren[item] ?? [] where tree.placements[child]?.parent != .trash {
                collect(child, at: path + "/" + tree.placements[child]!.name, deletion: deletion, depth: depth + 1)
            }
        }
        for item in treeChildren[.trash] ?? [] {
            if let path = formerPath(item, depth: 0), let deletion = deletions[item] { collect(item, at: path, deletion: deletion.at, depth: 0) }
        }
        var deleted: [String: Entry] = [:]
        for (path, items) in byPath where entries[path] == nil {
            let directories = items.filter { (tree.placements[$0]?.parent == .trash ? deletions[$0]?.was : tree.placements[$0])?.isDirectory == true }
            if !directories.isEmpty {
                deleted[path] = Entry(path: path, isDirectory: true, items: directories.sorted(), history: [], deletion: deletedAt[path])
                continue
            }
            let versions = items.flatMap { histories.versions[$0] ?? [] }.sorted { $0.timestamp < $1.timestamp }
            let history = versions.enumerated().map { index, version in
                HistoryEntry(number: index + 1, version: version, concurrent: index > 0 && version.base != versions[index - 1].root,
                             head: index == versions.count - 1)
            }
            deleted[path] = Entry(path: path, isDirectory: false, items: items.sorted(), history: history, deletion: deletedAt[path])
        }
        self.deleted = deleted
    }

    /// The placements the folder shows: every item outside the trash, and the deleted ones a
    /// later change brings back (delete vs. edit: the larger timestamp decides). An item in a
    /// deleted subtree whose last version, or the move that put it there, is newer than the
    /// delete of every deleted directory above it comes back with those directories, each
    /// where it was — but not their other contents (those stay deleted). A directory moved in
    /// after the delete comes back whole. Also returns each item that came back by a change of
    /// its own, with the delete it overruled (the nearest above it).
    static func shown(tree: ReplicatedTree, deletions: [ItemID: ReplicatedTree.Deletion],
                      histories: FileHistories) -> (placements: [ItemID: ReplicatedTree.Placement], overruled: [ItemID: HLCTimestamp]) {
        var live: [ItemID: Bool] = [.root: true, .trash: false]
        func isLive(_ item: ItemID) -> Bool {
            var path: [ItemID] = []
            var current = item
            while live[current] == nil, let placement = tree.placements[current], path.count <= tree.placements.count {
                path.append(current)
                current = placement.parent
            }
            let answer = live[current] ?? false
            for step in path { live[step] = answer }
            return answer
        }
        var placements: [ItemID: ReplicatedTree.Placement] = [:]
        var deleted: [ItemID] = []
        for (item, placement) in tree.placements {
            if isLive(item) { placements[item] = placement } else { deleted.append(item) }
        }
        // What a change at `time` to `item` brings back: the item and the directories above it
        // up to a live one, each where it goes (a deleted one where it was), or nil when a
        // delete above it is newer than the change.
        func revival(of item: ItemID, at time: HLCTimestamp) -> [(ItemID, ReplicatedTree.Placement)]? {
            var restored: [(ItemID, ReplicatedTree.Placement)] = []
            var current = item
            for _ in 0...tree.placements.count {
                if isLive(current) { return restored }  // (never stops at a restored one: the order of items must not matter)
                guard let placement = tree.placements[current] else { return nil }
                if placement.parent == .trash {
                    guard let deletion = deletions[current], deletion.at < time else { return nil }
                    restored.append((current, deletion.was))
                    current = deletion.was.parent
                } else {
                    restored.append((current, placement))
                    current = placement.parent
                }
            }
            return nil
        }
        var whole: [ItemID] = []
        var overruled: [ItemID: HLCTimestamp] = [:]
        for item in deleted {
            guard let placement = tree.placements[item] else { continue }
            let time = max(placement.parent == .trash ? OperationCodec.unknownTime : placement.at,
                           histories.head(of: item)?.timestamp ?? OperationCodec.unknownTime)
            guard let restored = revival(of: item, at: time) else { continue }
            if let nearest = restored.lazy.compactMap({ tree.placements[$0.0]?.parent == .trash ? deletions[$0.0]?.at : nil }).first {
                overruled[item] = nearest
            }
            for (shown, placement) in restored { placements[shown] = placement }
            if placement.isDirectory && placement.parent != .trash { whole.append(item) }
        }
        // A directory that came back whole brings what is under it.
        if !whole.isEmpty {
            var children: [ItemID: [ItemID]] = [:]
            for (item, placement) in tree.placements where placement.parent != .trash { children[placement.parent, default: []].append(item) }
            var queue = whole
            while let directory = queue.popLast() {
                for child in children[directory] ?? [] where placements[child] == nil {
                    placements[child] = tree.placements[child]
                    queue.append(child)
                }
            }
        }
        return (placements, overruled)
    }

    /// This view without the paths `excluded` says (the ignoring node's materialization).
    func excluding(_ excluded: (String) -> Bool) -> FolderView {
        var copy = self
        copy.entries = entries.filter { !excluded($0.key) }
        return copy
    }
}
