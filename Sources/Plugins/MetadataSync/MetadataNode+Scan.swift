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

    /// Turns what changed on disk since the last pass into operations. Returns when to look
    /// again for a file still being written (not versioned yet), or nil.
    ///
    /// Each path the walk found meets the rules in order, and the first that decides it wins:
    /// the same file (`versionIfEdited`), a recorded inode under a new name (`moveIfRenamed`),
    /// a file the tree shows whose record was lost (`claimIfShown`), a rename the walk caught
    /// halfway (`isRenamedMidWalk`), and otherwise a new file or directory (`create`). Then
    /// what is gone is deleted (`deleteVanished`).
    func scan() async -> Duration? {
        let ignore = Ignore(folder: folder)
        let (disk, foreign) = walk(ignore)
        lastWalk = disk
        watcher?.watch([folder] + disk.filter(\.value.isDirectory).map { folder + "/" + $0.key })
        var pass = ScanPass(disk: disk, foreign: foreign, view: view(), paths: paths, now: Int64(Date().timeIntervalSince1970 * 1e9),
                            stable: Int64(configuration.stableAfter.duration.nanoseconds), foundAfterStop: !firstPassDone)
        indexAhead(disk, pass)
        for path in disk.keys.sorted() where !pass.isRaced(path) {
            let entry = disk[path]!
            if versionIfEdited(path, entry, &pass) || moveIfRenamed(path, entry, &pass) || claimIfShown(path, entry, &pass) { continue }
            if !entry.isDirectory && pass.waitsToSettle(entry) { continue }
            if isRenamedMidWalk(path, entry, pass) {
                pass.unstable = true
                continue
            }
            create(path, entry, &pass)
        }
        deleteVanished(&pass, ignore: ignore)
        if !pass.seen.isEmpty { logger.info("local changes: \(pass.seen.joined(separator: ", "))") }
        await commit(pass.makes)
        await persist(pass.changes)
        return pass.nextLook(now: Int64(Date().timeIntervalSince1970 * 1e9))
    }

    /// Indexes the new and edited files the rules will version, in one transaction: the rules
    /// then find each current (`index`). New means a path and an inode nobody recorded (a moved
    /// file is not read again); settled means not young. (One commit per file was a third of
    /// a writer's scan of 20,000 new files.)
    func indexAhead(_ disk: [String: DiskEntry], _ pass: ScanPass) {
        let candidates = disk.compactMap { path, entry -> String? in
            guard !entry.isDirectory, !pass.isYoung(entry) else { return nil }
            if let state = paths[path] {
                return state.inode == entry.inode && (state.size != entry.size || state.mtime != entry.mtime) ? path : nil
            }
            return pass.recordedInodes[entry.inode] == nil ? path : nil
        }
        if !candidates.isEmpty { p2p.folderIndex.index(candidates) }
    }

    // MARK: The rules

    /// Rule 1, the same file at its recorded path (the same inode; or, for a file, a new inode
    /// whose old one is nowhere on disk — an editor that saves by writing a new file and
    /// renaming it over the old). Versions it once its bytes (or its mode alone) changed and
    /// it has been still for `stable_after`. True when the path is that file.
    func versionIfEdited(_ path: String, _ entry: DiskEntry, _ pass: inout ScanPass) -> Bool {
        guard let state = paths[path], state.isDirectory == entry.isDirectory,
              state.inode == entry.inode || (!entry.isDirectory && !pass.inodesOnDisk.contains(state.inode)) else { return false }
        guard !entry.isDirectory else { return true }
        guard state.inode != entry.inode || state.size != entry.size || state.mtime != entry.mtime else {
            // The same bytes with other permissions (chmod): a version of the mode alone.
            if state.mode != entry.mode, let root = state.root {
                let item = state.item, size = Int(entry.size), mtime = entry.mtime, mode = entry.mode
                pass.makes.append(.found(at: entry.ctime, after: newest(item)) {
                    .version(.init(timestamp: $0, item: item, root: root, size: size, mtime: mtime, base: root, mode: mode))
                })
                pass.seen.append("changed the mode of \(path)")
                var changed = state
                changed.mode = mode
                record(path, changed, &pass)
            }
            return true
        }
        guard !pass.waitsToSettle(entry) else { return true }
        guard let root = index(path) else { return true }
        let item = state.item, base = state.root, size = Int(entry.size), mtime = entry.mtime, mode = entry.mode
        if root != base || mode != state.mode {
            pass.makes.append(.found(at: mtime, after: newest(item)) {
                .version(.init(timestamp: $0, item: item, root: root, size: size, mtime: mtime, base: base, mode: mode))
            })
            pass.seen.append("edited \(path)")
        }
        record(path, PathState(item: item, isDirectory: false, inode: entry.inode, size: entry.size, mtime: entry.mtime, root: root, mode: mode),
               &pass)
        return true
    }

    /// Rule 2, a recorded inode under a new name: a move, not a delete and a create. A
    /// directory's records move with it, as they were recorded (an edit inside it that no
    /// pass has versioned yet is still an edit to the next one). True when it was a move (or
    /// waits for its new parent to be recorded).
    func moveIfRenamed(_ path: String, _ entry: DiskEntry, _ pass: inout ScanPass) -> Bool {
        guard let from = pass.vanished[entry.inode], let old = paths[from], old.isDirectory == entry.isDirectory else { return false }
        guard let parent = parentItem(of: path) else {
            pass.unstable = true
            return true
        }
        pass.vanished[entry.inode] = nil
        let item = old.item, newName = Self.name(of: path), directory = old.isDirectory
        let move: (HLCTimestamp) -> TreeOperation = { .move(.init(timestamp: $0, item: item, parent: parent, name: newName, isDirectory: directory)) }
        // One the first pass finds happened while the node was stopped: stamped when it
        // happened, after everything the node held then (its clock at start, which is past
        // every move a peer may have settled: no remote operation is applied before they are
        // committed). Later ones are stamped now.
        pass.makes.append(pass.foundAfterStop ? .found(at: entry.ctime, after: startedAt, move) : .now(move))
        pass.seen.append("moved \(from) to \(path)")
        indexMoved(from: from, to: path)
        record(from, nil, &pass)
        record(path, PathState(item: item, isDirectory: directory, inode: entry.inode, size: old.size, mtime: old.mtime, root: old.root,
                               mode: old.mode), &pass)
        if directory {
            for (child, state) in paths where child.hasPrefix(from + "/") {
                record(child, nil, &pass)
                record(path + child.dropFirst(from.count), state, &pass)
            }
        }
        return true
    }

    /// Rule 3, a file without a record where the tree shows a file (its record was lost — the
    /// node stopped right after it landed, or it landed while its directory moved): that item,
    /// claimed now and versioned by a later pass if its bytes differ.
    func claimIfShown(_ path: String, _ entry: DiskEntry, _ pass: inout ScanPass) -> Bool {
        guard !entry.isDirectory, let shown = pass.view.entries[path], !shown.isDirectory, let head = shown.head else { return false }
        record(path, PathState(item: head.item, isDirectory: false, inode: entry.inode, size: -1, mtime: 0, root: head.root, mode: head.mode), &pass)
        pass.unstable = true
        return true
    }

    /// Rule 4, an inode still recorded under a path the walk also saw, and just renamed or
    /// linked: a rename that happened while the folder was walked (both names seen). The next
    /// look sees one name: a move. (A hard link, once settled, is a new file.)
    func isRenamedMidWalk(_ path: String, _ entry: DiskEntry, _ pass: ScanPass) -> Bool {
        guard let other = pass.recordedInodes[entry.inode], other != path else { return false }
        return pass.disk[other]?.inode == entry.inode && pass.now - entry.ctime < pass.stable
    }

    /// Rule 5, anything else: a new item, placed now (it orders nothing the peers did; a
    /// create inside a directory deleted meanwhile elsewhere keeps the directory), its bytes
    /// stamped when they were written. A directory the tree already shows at this path is
    /// that directory.
    func create(_ path: String, _ entry: DiskEntry, _ pass: inout ScanPass) {
        guard let parent = parentItem(of: path) else {
            pass.unstable = true
            return
        }
        let directory = entry.isDirectory
        var root: ChunkID?
        if !directory {
            guard let indexed = index(path) else { return }
            root = indexed
        }
        if directory, let shown = pass.view.entries[path], shown.isDirectory {
            record(path, PathState(item: shown.items[0], isDirectory: true, inode: entry.inode, size: entry.size, mtime: entry.mtime, root: nil,
                                   mode: entry.mode), &pass)
            return
        }
        let item = ItemID.random(using: &generator), newName = Self.name(of: path)
        pass.makes.append(.now { .move(.init(timestamp: $0, item: item, parent: parent, name: newName, isDirectory: directory)) })
        pass.seen.append("created \(path)")
        if let root {
            let size = Int(entry.size), mtime = entry.mtime, mode = entry.mode
            pass.makes.append(.found(at: mtime, after: nil) {
                .version(.init(timestamp: $0, item: item, root: root, size: size, mtime: mtime, base: nil, mode: mode))
            })
        }
        record(path, PathState(item: item, isDirectory: directory, inode: entry.inode, size: entry.size, mtime: entry.mtime, root: root,
                               mode: entry.mode), &pass)
    }

    /// What is gone: a delete for each topmost path (its subtree goes with it) — once it has
    /// stayed gone for `stable_after`. A rename that happens while the folder is being walked
    /// can hide a file under both names; the next look finds it under the new one (a move,
    /// history kept) instead of a delete and an unrelated create.
    func deleteVanished(_ pass: inout ScanPass, ignore: Ignore) {
        let disk = pass.disk
        for path in missingSince.keys where disk[path] != nil || paths[path] == nil { missingSince[path] = nil }
        for (path, state) in paths where disk[path] == nil || disk[path]!.inode != state.inode {
            guard paths[path] == state, !pass.isRaced(path) else { continue }
            // Ignored here (.harpignore): invisible to sync, so never a delete — the walk does not
            // look there, and what the peers have there stays.
            if ignore.covers(path) { continue }
            // A symbolic link (or anything not a file or directory) at the path or above it:
            // not synced, never taken for a delete — the peers keep what they have there.
            if let link = pass.foreign.first(where: { path == $0 || path.hasPrefix($0 + "/") }) {
                if foreignPaths.insert(link).inserted {
                    logger.warning("\(link) is a symbolic link (or another special file): not synced, and what the peers have there is kept")
                }
                continue
            }
            let since = missingSince[path] ?? pass.now
            guard pass.now - since >= pass.stable else {
                missingSince[path] = since
                pass.unstable = true
                continue
            }
            missingSince[path] = nil
            let parentGone = path.lastIndex(of: "/").map { slash in disk[String(path[..<slash])] == nil } ?? false
            if !parentGone {
                let item = state.item, oldName = Self.name(of: path), directory = state.isDirectory
                let delete: (HLCTimestamp) -> TreeOperation = { .move(.init(timestamp: $0, item: item, parent: .trash, name: oldName, isDirectory: directory)) }
                // Removing a name changes its directory's modification time: when it happened.
                let parentTime = path.lastIndex(of: "/").map { disk[String(path[..<$0])]?.mtime } ?? folderModified()
                if pass.foundAfterStop, let parentTime { pass.makes.append(.found(at: parentTime, after: startedAt, delete)) } else { pass.makes.append(.now(delete)) }
                pass.seen.append("deleted \(path)")
            }
            record(path, nil, &pass)
        }
    }

    // MARK: Helpers of the rules

    /// Records `state` at `path` now, and for the pass's write to the database.
    private func record(_ path: String, _ state: PathState?, _ pass: inout ScanPass) {
        paths[path] = state
        pass.changes[path] = .some(state)
    }

    /// The recorded directory a path goes under — nil when it is not recorded (yet). Nothing
    /// is recorded under a parent that is not: a child whose directory is not (yet) in `paths`
    /// waits for a pass that records the directory first. (Placing it at the top instead
    /// flattened a 2,000-file directory moved mid-walk, on every node.)
    private func parentItem(of path: String) -> ItemID? {
        guard let slash = path.lastIndex(of: "/") else { return .root }
        guard let parent = paths[String(path[..<slash])], parent.isDirectory else { return nil }
        return parent.item
    }

    private func newest(_ item: ItemID) -> HLCTimestamp? { replica.histories.head(of: item)?.timestamp }

    static func name(of path: String) -> String { path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path }

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
