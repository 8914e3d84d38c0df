import BlockExchange
import CoreMetrics
import CShims
import Foundation
import Glibc
import HarpKernel
import Logging

extension MetadataNode {
    // MARK: Folder → operations

    struct DiskEntry {
        let isDirectory: Bool
        let inode: Int64
        let size: Int64
        let mtime: Int64
        /// Status change time (ns): a rename or a new link sets it.
        let ctime: Int64
        let mode: UInt16
    }

    /// Turns what changed on disk since the last pass into operations. Returns whether a file
    /// was still being written (not versioned yet).
    func scan() async -> Bool {
        let ignore = Ignore(folder: folder)
        let (disk, foreign) = walk(ignore)
        lastWalk = disk
        let view = view()
        watcher?.watch([folder] + disk.filter(\.value.isDirectory).map { folder + "/" + $0.key })
        let nowNanos = Int64(Date().timeIntervalSince1970 * 1e9)
        let stable = Int64(configuration.stableAfter.duration.nanoseconds)
        var unstable = false
        var makes: [LocalChange] = []
        var seen: [String] = []
        // Moves and deletes the scans at start find happened while the node was stopped:
        // stamped when they happened, after everything the node held then (its clock at
        // start, which is past every move a peer may have settled: no remote operation is
        // applied before they are committed). Later ones are stamped now.
        let foundAfterStop = !firstPassDone
        func newest(_ item: ItemID) -> HLCTimestamp? { replica.histories.head(of: item)?.timestamp }
        var changes: [String: PathState?] = [:]
        // Paths whose recorded inode is no longer there: sources of renames.
        var vanished: [Int64: String] = [:]
        for (path, state) in paths where disk[path].map({ $0.inode != state.inode || $0.isDirectory != state.isDirectory }) ?? true {
            vanished[state.inode] = path
        }
        // Nothing is recorded under a parent that is not recorded: a child whose directory is
        // not (yet) in `paths` waits for a pass that records the directory first. (Placing it at
        // the top instead flattened a 2,000-file directory moved mid-walk, on every node.)
        func parentItem(of path: String) -> ItemID? {
            guard let slash = path.lastIndex(of: "/") else { return .root }
            guard let parent = paths[String(path[..<slash])], parent.isDirectory else { return nil }
            return parent.item
        }
        // A directory has one name: seen under two in one walk, the walk raced a rename of it
        // (or of a directory above it) — an open directory still lists after it moved. Nothing
        // under either name is decided this pass; the next walk sees one name: one move.
        var namesOfDirectory: [Int64: [String]] = [:]
        for (path, entry) in disk where entry.isDirectory { namesOfDirectory[entry.inode, default: []].append(path) }
        let raced = namesOfDirectory.values.filter { $0.count > 1 }.flatMap { $0 }
        func isRaced(_ path: String) -> Bool { raced.contains { path == $0 || path.hasPrefix($0 + "/") } }
        if !raced.isEmpty { unstable = true }
        func name(of path: String) -> String { path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path }
        func record(_ path: String, _ state: PathState?) {
            paths[path] = state
            changes[path] = .some(state)
        }
        // A file saved by writing a new one and renaming it over the old (what most editors
        // do) has a new inode at the same path: still an edit of the same item, as long as the
        // old inode did not move elsewhere.
        let inodesOnDisk = Set(disk.values.map(\.inode))
        let recordedInodes = Dictionary(paths.map { ($0.value.inode, $0.key) }, uniquingKeysWith: { first, _ in first })
        for path in disk.keys.sorted() where !isRaced(path) {
            let entry = disk[path]!
            if let state = paths[path], state.isDirectory == entry.isDirectory,
               state.inode == entry.inode || (!entry.isDirectory && !inodesOnDisk.contains(state.inode)) {
                guard !entry.isDirectory else { continue }
                guard state.inode != entry.inode || state.size != entry.size || state.mtime != entry.mtime else {
                    // The same bytes with other permissions (chmod): a version of the mode alone.
                    if state.mode != entry.mode, let root = state.root {
                        let item = state.item, size = Int(entry.size), mtime = entry.mtime, mode = entry.mode
                        makes.append(.found(at: entry.ctime, after: newest(item)) {
                            .version(.init(timestamp: $0, item: item, root: root, size: size, mtime: mtime, base: root, mode: mode))
                        })
                        seen.append("changed the mode of \(path)")
                        var changed = state
                        changed.mode = mode
                        record(path, changed)
                    }
                    continue
                }
                guard nowNanos - entry.mtime >= stable else {
                    unstable = true
                    continue
                }
                guard let root = index(path) else { continue }
                let item = state.item, base = state.root, size = Int(entry.size), mtime = entry.mtime, mode = entry.mode
                if root != base || mode != state.mode {
                    makes.append(.found(at: mtime, after: newest(item)) {
                        .version(.init(timestamp: $0, item: item, root: root, size: size, mtime: mtime, base: base, mode: mode))
                    })
                    seen.append("edited \(path)")
                }
                record(path, PathState(item: item, isDirectory: false, inode: entry.inode, size: entry.size, mtime: entry.mtime, root: root,
                                       mode: mode))
                continue
            }
            if let from = vanished[entry.inode], let old = paths[from], old.isDirectory == entry.isDirectory {
                // The same inode under a new name: a move, not a delete and a create.
                guard let parent = parentItem(of: path) else {
                    unstable = true
                    continue
                }
                vanished[entry.inode] = nil
                let item = old.item, newName = name(of: path), directory = old.isDirectory
                let move: (HLCTimestamp) -> TreeOperation = { .move(.init(timestamp: $0, item: item, parent: parent, name: newName, isDirectory: directory)) }
                makes.append(foundAfterStop ? .found(at: entry.ctime, after: startedAt, move) : .now(move))
                seen.append("moved \(from) to \(path)")
                indexMoved(from: from, to: path)
                record(from, nil)
                record(path, PathState(item: item, isDirectory: directory, inode: entry.inode, size: old.size, mtime: old.mtime, root: old.root,
                                       mode: old.mode))
                if directory {
                    for (child, state) in paths where child.hasPrefix(from + "/") {
                        record(child, nil)
                        record(path + child.dropFirst(from.count), state)
                    }
                }
                continue
            }
            // A file without a record where the tree shows a file (its record was lost — the
            // node stopped right after it landed, or it landed while its directory moved) is
            // that item: claimed now, versioned by a later pass if its bytes differ.
            if !entry.isDirectory, let shown = view.entries[path], !shown.isDirectory, let head = shown.head {
                record(path, PathState(item: head.item, isDirectory: false, inode: entry.inode, size: -1, mtime: 0, root: head.root, mode: head.mode))
                unstable = true
                continue
            }
            if !entry.isDirectory && nowNanos - entry.mtime < stable {
                unstable = true
                continue
            }
            // Its inode still recorded under a path the walk also saw, and just renamed or
            // linked: a rename that happened while the folder was walked (both names seen).
            // The next look sees one name: a move. (A hard link, once settled, is a new file.)
            if let other = recordedInodes[entry.inode], other != path, disk[other]?.inode == entry.inode, nowNanos - entry.ctime < stable {
                unstable = true
                continue
            }
            guard let parent = parentItem(of: path) else {
                unstable = true
                continue
            }
            let directory = entry.isDirectory
            var root: ChunkID?
            if !directory {
                guard let indexed = index(path) else { continue }
                root = indexed
            }
            // A directory the tree already shows at this path is that directory.
            if directory, let shown = view.entries[path], shown.isDirectory {
                record(path, PathState(item: shown.items[0], isDirectory: true, inode: entry.inode, size: entry.size, mtime: entry.mtime, root: nil,
                                       mode: entry.mode))
                continue
            }
            let item = ItemID.random(using: &generator), newName = name(of: path)
            // A new item is placed now (it orders nothing the peers did; a create inside a
            // directory deleted meanwhile elsewhere keeps the directory), its bytes when written.
            makes.append(.now { .move(.init(timestamp: $0, item: item, parent: parent, name: newName, isDirectory: directory)) })
            seen.append("created \(path)")
            if let root {
                let size = Int(entry.size), mtime = entry.mtime, mode = entry.mode
                makes.append(.found(at: mtime, after: nil) {
                    .version(.init(timestamp: $0, item: item, root: root, size: size, mtime: mtime, base: nil, mode: mode))
                })
            }
            record(path, PathState(item: item, isDirectory: directory, inode: entry.inode, size: entry.size, mtime: entry.mtime, root: root,
                                   mode: entry.mode))
        }
        // What is gone: a delete for each topmost path (its subtree goes with it) — once it
        // has stayed gone for `stable_after`. A rename that happens while the folder is being
        // walked can hide a file under both names; the next look finds it under the new one
        // (a move, history kept) instead of a delete and an unrelated create.
        for path in missingSince.keys where disk[path] != nil || paths[path] == nil { missingSince[path] = nil }
        for (path, state) in paths where disk[path] == nil || disk[path]!.inode != state.inode {
            guard paths[path] == state, !isRaced(path) else { continue }
            // Ignored here (.harpignore): invisible to sync, so never a delete — the walk does not
            // look there, and what the peers have there stays.
            if ignore.covers(path) { continue }
            // A symbolic link (or anything not a file or directory) at the path or above it:
            // not synced, never taken for a delete — the peers keep what they have there.
            if let link = foreign.first(where: { path == $0 || path.hasPrefix($0 + "/") }) {
                if foreignPaths.insert(link).inserted {
                    logger.warning("\(link) is a symbolic link (or another special file): not synced, and what the peers have there is kept")
                }
                continue
            }
            let since = missingSince[path] ?? nowNanos
            guard nowNanos - since >= stable else {
                missingSince[path] = since
                unstable = true
                continue
            }
            missingSince[path] = nil
            let parentGone = path.lastIndex(of: "/").map { slash in disk[String(path[..<slash])] == nil } ?? false
            if !parentGone {
                let item = state.item, oldName = name(of: path), directory = state.isDirectory
                let delete: (HLCTimestamp) -> TreeOperation = { .move(.init(timestamp: $0, item: item, parent: .trash, name: oldName, isDirectory: directory)) }
                // Removing a name changes its directory's modification time: when it happened.
                let parentTime = path.lastIndex(of: "/").map { disk[String(path[..<$0])]?.mtime } ?? folderModified()
                if foundAfterStop, let parentTime { makes.append(.found(at: parentTime, after: startedAt, delete)) } else { makes.append(.now(delete)) }
                seen.append("deleted \(path)")
            }
            record(path, nil)
        }
        if !seen.isEmpty { logger.info("local changes: \(seen.joined(separator: ", "))") }
        await commit(makes)
        await persist(changes)
        return unstable
    }

    /// Tells the p2p index a synced path was renamed, so its content is still served.
    func indexMoved(from: String, to: String) {
        do {
            try p2p.folderIndex.moved(from: from, to: to)
        } catch {
            logger.warning("the index does not follow \(from) to \(to): \(error)")
        }
    }

    func index(_ path: String) -> ChunkID? {
        do {
            return try p2p.folderIndex.index(path)
        } catch {
            logger.info("not versioned yet: \(error)")
            return nil
        }
    }


    /// Records `state` at `path` within 50 ms, with whatever else comes meanwhile.
    func persistSoon(_ path: String, _ state: PathState?) {
        let first = unpersisted.isEmpty
        unpersisted[path] = .some(state)
        guard first else { return }
        Task {
            try? await Task.sleep(for: .milliseconds(50))
            await self.persist([:])
        }
    }

    /// Writes `changes`, after the records waiting (`persistSoon`): a later record of a path
    /// never goes under an earlier one.
    func persist(_ changes: [String: PathState?]) async {
        let landed = unpersisted
        unpersisted = [:]
        // A landed file is on disk (its download synced it) but its rename into place is only
        // once its directory is synced: before the record says it is there, or a power cut
        // could leave a record of a file that is not — which the next scan takes for a delete.
        // One fsync per directory per batch.
        let directories = Set(landed.compactMap { path, state in state == nil ? nil : path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "" })
        for directory in directories {
            let fd = disk.open(directory, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            if fd >= 0 {
                fsync(fd)
                close(fd)
            }
        }
        let all = landed.merging(changes) { $1 }
        guard !all.isEmpty else { return }
        do {
            try await log.record(all)
        } catch {
            logger.error("cannot record the folder's state: \(error)")
        }
    }

    /// Every synced path under the folder (relative), without hidden names, the node's state
    /// directory, or what `.harpignore` names — and the paths that are something else
    /// (symbolic links, devices): those are reported, never followed. Directories are opened
    /// beneath their parent with O_NOFOLLOW, so a directory swapped for a link mid-walk is not
    /// entered either.
    func walk(_ ignore: Ignore) -> (entries: [String: DiskEntry], foreign: Set<String>) {
        var out: [String: DiskEntry] = [:]
        var foreign: Set<String> = []
        func visit(_ relative: String, _ fd: Int32) {
            guard let directory = fdopendir(fd) else {
                close(fd)
                return
            }
            defer { closedir(directory) }
            let dirfd = Glibc.dirfd(directory)
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name.hasPrefix(".") { continue }
                let child = relative.isEmpty ? name : relative + "/" + name
                if folder + "/" + child == stateDirectory || ignore.matches(child) { continue }
                var info = stat()
                guard fstatat(dirfd, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
                let kind = info.st_mode & S_IFMT
                guard kind == S_IFDIR || kind == S_IFREG else {
                    foreign.insert(child)
                    continue
                }
                out[child] = DiskEntry(isDirectory: kind == S_IFDIR, inode: Int64(info.st_ino), size: Int64(info.st_size),
                                       mtime: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec),
                                       ctime: Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec),
                                       mode: UInt16(info.st_mode & 0o777))
                if kind == S_IFDIR {
                    let sub = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                    if sub >= 0 { visit(child, sub) }
                }
            }
        }
        let top = disk.open("", flags: O_RDONLY | O_DIRECTORY)
        if top >= 0 { visit("", top) }
        return (out, foreign)
    }
}
