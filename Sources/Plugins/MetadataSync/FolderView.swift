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
        public var head: TreeOperation.Version? { history.last?.version }
    }

    public private(set) var entries: [String: Entry]
    /// Deleted files and directories, by the path they had when they were deleted, with their
    /// histories (`harp storage ls --deleted`, `history`, `restore`).
    public let deleted: [String: Entry]

    public init(tree: ReplicatedTree, histories: FileHistories) {
        // Effective placements: the tree's, with deleted items restored by a later version.
        let deletions = tree.deletions()
        var placements: [ItemID: ReplicatedTree.Placement] = [:]
        for (item, placement) in tree.placements {
            if placement.parent != .trash {
                placements[item] = placement
            } else if let deletion = deletions[item], let head = histories.head(of: item), deletion.at < head.timestamp {
                placements[item] = deletion.was
            }
        }
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
                    entries[childPath] = Entry(path: childPath, isDirectory: true, items: directories, history: [])
                    walk(directories, path: childPath, depth: depth + 1)
                } else {
                    let files = items.sorted()
                    let versions = files.flatMap { histories.versions[$0] ?? [] }.sorted { $0.timestamp < $1.timestamp }
                    var history: [HistoryEntry] = []
                    for (index, version) in versions.enumerated() {
                        let concurrent = index > 0 && version.base != versions[index - 1].root
                        history.append(HistoryEntry(number: index + 1, version: version, concurrent: concurrent, head: index == versions.count - 1))
                    }
                    entries[childPath] = Entry(path: childPath, isDirectory: false, items: files, history: history)
                }
            }
        }
        walk([.root], path: "", depth: 0)
        self.entries = entries

        // Deleted items where they were: each item in the trash under its parent's path then
        // (live, or deleted too), and everything that was under it.
        var livePaths: [ItemID: String] = [:]
        for entry in entries.values { for item in entry.items { livePaths[item] = entry.path } }
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
        func collect(_ item: ItemID, at path: String, depth: Int) {
            byPath[path, default: []].append(item)
            guard depth < 4096 else { return }
            for child in treeChildren[item] ?? [] where tree.placements[child]?.parent != .trash {
                collect(child, at: path + "/" + tree.placements[child]!.name, depth: depth + 1)
            }
        }
        for item in treeChildren[.trash] ?? [] where placements[item] == nil {
            if let path = formerPath(item, depth: 0) { collect(item, at: path, depth: 0) }
        }
        var deleted: [String: Entry] = [:]
        for (path, items) in byPath where entries[path] == nil {
            let directories = items.filter { (tree.placements[$0]?.parent == .trash ? deletions[$0]?.was : tree.placements[$0])?.isDirectory == true }
            if !directories.isEmpty {
                deleted[path] = Entry(path: path, isDirectory: true, items: directories.sorted(), history: [])
                continue
            }
            let versions = items.flatMap { histories.versions[$0] ?? [] }.sorted { $0.timestamp < $1.timestamp }
            let history = versions.enumerated().map { index, version in
                HistoryEntry(number: index + 1, version: version, concurrent: index > 0 && version.base != versions[index - 1].root,
                             head: index == versions.count - 1)
            }
            deleted[path] = Entry(path: path, isDirectory: false, items: items.sorted(), history: history)
        }
        self.deleted = deleted
    }

    /// This view without the paths `excluded` says (the ignoring node's materialization).
    func excluding(_ excluded: (String) -> Bool) -> FolderView {
        var copy = self
        copy.entries = entries.filter { !excluded($0.key) }
        return copy
    }
}
