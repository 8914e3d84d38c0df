/// What one scan pass knows and decides: the walk, the tree's view, and the operations and
/// records it makes. The rules in MetadataNode+Scan read it and add to it.
struct ScanPass {
    let disk: [String: MetadataNode.DiskEntry]
    /// Paths that are neither a file nor a directory (symbolic links): never followed.
    let foreign: Set<String>
    let view: FolderView
    /// The pass's clock and `stable_after` (ns).
    let now: Int64
    let stable: Int64
    /// The first pass after start: what it finds moved or deleted happened while the node
    /// was stopped.
    let foundAfterStop: Bool
    /// Recorded inodes no longer at their recorded path: sources of renames.
    var vanished: [Int64: String] = [:]
    /// Directories seen under two names in this walk, and everything under them: the walk
    /// raced a rename (an open directory still lists after it moved). Nothing under either
    /// name is decided this pass; the next walk sees one name: one move.
    let raced: [String]
    let inodesOnDisk: Set<Int64>
    /// Each recorded inode's path, as the pass began.
    let recordedInodes: [Int64: String]

    /// A file was still being written, or something waits for a later look.
    var unstable = false
    /// When the youngest file seen still being written becomes settled (ns, the pass's clock;
    /// 0 when none was): the next look is due then, not a whole `stable_after` later.
    var settlesAt: Int64 = 0
    var makes: [MetadataNode.LocalChange] = []
    /// What the log line says the pass found.
    var seen: [String] = []
    var changes: [String: PathState?] = [:]

    init(disk: [String: MetadataNode.DiskEntry], foreign: Set<String>, view: FolderView, paths: [String: PathState], now: Int64, stable: Int64,
         foundAfterStop: Bool) {
        self.disk = disk
        self.foreign = foreign
        self.view = view
        self.now = now
        self.stable = stable
        self.foundAfterStop = foundAfterStop
        for (path, state) in paths where disk[path].map({ $0.inode != state.inode || $0.isDirectory != state.isDirectory }) ?? true {
            vanished[state.inode] = path
        }
        var namesOfDirectory: [Int64: [String]] = [:]
        for (path, entry) in disk where entry.isDirectory { namesOfDirectory[entry.inode, default: []].append(path) }
        raced = namesOfDirectory.values.filter { $0.count > 1 }.flatMap { $0 }
        unstable = !raced.isEmpty
        inodesOnDisk = Set(disk.values.map(\.inode))
        recordedInodes = Dictionary(paths.map { ($0.value.inode, $0.key) }, uniquingKeysWith: { first, _ in first })
    }

    func isRaced(_ path: String) -> Bool { raced.contains { path == $0 || path.hasPrefix($0 + "/") } }

    /// Written less than `stable_after` ago: not taken as settled yet.
    func isYoung(_ entry: MetadataNode.DiskEntry) -> Bool { now - entry.mtime < stable }

    /// Whether `entry` is young; if so the pass is unstable until it settles.
    mutating func waitsToSettle(_ entry: MetadataNode.DiskEntry) -> Bool {
        guard isYoung(entry) else { return false }
        unstable = true
        settlesAt = max(settlesAt, entry.mtime + stable)
        return true
    }

    /// How long until the next look: until the youngest file settles (and a little: file
    /// times come from a clock up to 10 ms coarse), else `stable_after` and a little. nil when
    /// nothing waits.
    func nextLook(now: Int64) -> Duration? {
        guard unstable else { return nil }
        let margin: Int64 = 20_000_000
        guard settlesAt > 0 else { return .nanoseconds(stable + 5 * margin) }
        return .nanoseconds(min(max(settlesAt - now, 0), stable) + margin)
    }
}
