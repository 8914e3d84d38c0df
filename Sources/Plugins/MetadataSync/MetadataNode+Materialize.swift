import BlockExchange
import CoreMetrics
import CShims
import Foundation
import Glibc
import HarpKernel
import Logging

extension MetadataNode {
    // MARK: Operations → folder

    /// Makes the folder show the view: directories made, files fetched (from the folder
    /// itself, the version store, or the peers), moves done as renames, removed files kept
    /// in the version store. Every change goes through `disk` (`ConfinedDirectory`): beneath
    /// the folder, never through a symbolic link — a path under one is left alone and logged.
    func materialize() async {
        // Ignored paths are the user's alone here: nothing is created, fetched, moved or
        // removed under them.
        let ignore = Ignore(folder: folder)
        let full = view()
        let view = full.excluding { ignore.covers($0) }
        var changes: [String: PathState?] = [:]
        // Where each item is recorded: one lookup per entry (searching `paths` for each was
        // quadratic — 53% of a receiving node's CPU at 2,000 files).
        var pathOfItem = Dictionary(paths.map { ($0.value.item, $0.key) }, uniquingKeysWith: { first, _ in first })
        func record(_ path: String, _ state: PathState?) {
            if let old = paths[path], pathOfItem[old.item] == path { pathOfItem[old.item] = nil }
            paths[path] = state
            if let state { pathOfItem[state.item] = path }
            changes[path] = .some(state)
        }
        // Directories and moves first, then removals, then content: a slow download does not
        // hold up a delete.
        var fetches: [(path: String, head: TreeOperation.Version)] = []
        for entry in view.entries.values.sorted(by: { $0.path < $1.path }) {
            if entry.isDirectory {
                if let current = paths[entry.path], current.isDirectory { continue }
                if let from = entry.items.lazy.compactMap({ pathOfItem[$0] }).first, from != entry.path,
                   disk.lstat(from) != nil, expectOwn(from, entry.path), disk.rename(from, in: disk, to: entry.path, replace: false) == 0 {
                    indexMoved(from: from, to: entry.path)
                    for (path, state) in paths where path == from || path.hasPrefix(from + "/") {
                        record(path, nil)
                        record(entry.path + path.dropFirst(from.count), state)
                    }
                    continue
                }
                expectOwn(entry.path)
                let made = disk.mkdir(entry.path)
                if made == 0 { watcher?.watch([folder + "/" + entry.path]) }
                // A directory only if it is one (made now, or there already — the user's, of the
                // same name: same names merge); never what a link points at.
                if made == 0 || made == EEXIST, let state = state(entry.path, item: entry.items[0], root: nil), state.isDirectory {
                    record(entry.path, state)
                } else {
                    refusedPath(entry.path, made)
                }
                continue
            }
            guard let head = entry.head else { continue }
            if let current = paths[entry.path], current.root == head.root {
                if current.mode != head.mode { applyMode(head.mode, to: entry.path, recorded: current) }
                continue
            }
            // A local file the next scan will version. (Not seen by the walk: nothing is asked of
            // the disk — a file made since is never replaced, new files land without replacing.)
            if paths[entry.path] == nil, lastWalk[entry.path] != nil, disk.lstat(entry.path) != nil { continue }
            if missingSince[entry.path] != nil { continue }  // deleted (or being renamed) here: the scan decides
            // Changed on disk since it was recorded (being written, or not scanned yet): the
            // user's bytes are never replaced; the next scan makes them a version.
            if let current = paths[entry.path], !unchanged(entry.path, current) { continue }
            // The same content under another path of ours: a move.
            if let from = pathOfItem[head.item], let recorded = paths[from], recorded.root == head.root, from != entry.path,
               expectOwn(from, entry.path), disk.rename(from, in: disk, to: entry.path, replace: false) == 0 {
                indexMoved(from: from, to: entry.path)
                record(from, nil)
                // As it was recorded (a rename keeps the inode): bytes the user changed meanwhile
                // are still a change to the next scan, not taken for the recorded version.
                record(entry.path, recorded)
                continue
            }
            fetches.append((entry.path, head))
        }
        // Recorded paths the view no longer has: files into the version store, then empty
        // directories (deepest first). A file whose bytes cannot be kept stays where it is.
        for (path, state) in paths.sorted(by: { $0.key.count > $1.key.count }) where view.entries[path] == nil && !ignore.covers(path) {
            if !state.isDirectory, !unchanged(path, state) { continue }  // edited meanwhile: the scan decides
            if state.isDirectory {
                expectOwn(path, events: 2)  // its parent's delete event and its own
                _ = disk.rmdir(path)
            } else if !keepVersion(path, root: state.root) {
                continue
            }
            record(path, nil)
        }
        // Content arrives in the background, several files at once: a pass never waits for the
        // network, so local changes are published while remote ones download, and a file no
        // peer can send holds up nothing else (it is tried again later, less often). What is
        // wanted is set before the pass awaits anything: a fetch landing meanwhile goes where
        // this pass wants it (one that went by the last pass's wish, a path a move had just
        // left, stayed there on a new node).
        wanted = Dictionary(fetches.map { ($0.head.root, ($0.path, $0.head, paths[$0.path])) }, uniquingKeysWith: { first, _ in first })
        queued = fetches
        next = 0
        wantedGeneration = replica.generation
        await persist(changes)
        startFetches()
    }
}
