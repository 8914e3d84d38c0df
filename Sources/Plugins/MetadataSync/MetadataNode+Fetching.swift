import BlockExchange
import CoreMetrics
import CShims
import Foundation
import Glibc
import HarpKernel
import Logging

extension MetadataNode {
    // MARK: Fetching in the background

    /// Files fetched at once, at most.
    static let fetchesInFlight = 16

    /// Starts queued fetches while fewer than `fetchesInFlight` run.
    func startFetches() {
        let now = ContinuousClock.now
        while !stopped, inFlight.count < Self.fetchesInFlight, next < queued.count {
            let (path, head) = queued[next]
            next += 1
            if inFlight.contains(head.root) { continue }
            // Landed meanwhile: a fetch can finish while the pass that queued it again still
            // records its changes (`persist`), and it was fetched a second time — 19 of 150
            // small files did in the three-node test.
            if wanted[head.root] == nil { continue }
            if let failed = failedFetches[head.root], now < failed.until { continue }
            inFlight.insert(head.root)
            Task { await self.fetch(head, at: path) }
        }
    }

    func fetch(_ head: TreeOperation.Version, at path: String) async {
        let outcome = await stage(head)
        inFlight.remove(head.root)
        defer { startFetches() }
        let staged = stagingPath(head.root)
        switch outcome {
        case .done: break
        case .noRoom(let shortage): return fetchFailed(head, at: path, noRoom: shortage)
        case .failed(let failure): return fetchFailed(head, at: path, failure)
        }
        // Still wanted, by the path that waits for it now (a pass may have moved it: the
        // moves of a new node's catch-up often come after the creates), over what was there
        // when that was decided (the folder, a local edit or a newer remote version may have
        // moved on meanwhile)?
        guard !stopped, let still = wanted[head.root], replica.histories.head(of: still.head.item)?.root == head.root,
              paths[still.path] == still.over else {
            _ = disk.unlink(staged)
            return
        }
        switch put(still.head, at: still.path) {
        case .noRoom(let shortage):
            fetchFailed(still.head, at: still.path, noRoom: shortage)
        case .failed(let failure):
            fetchFailed(still.head, at: still.path, failure)
        case .done(let inode):
            failedFetches[head.root] = nil
            wanted[head.root] = nil
            let now = ContinuousClock.now
            landings.append((now, head.size))
            if let stale = landings.firstIndex(where: { now - $0.at < .seconds(10) }), stale > 0 { landings.removeFirst(stale) }
            let state = state(still.path, item: still.head.item, root: head.root)
                // Moved away the moment it landed (its directory renamed meanwhile): recorded
                // by inode, so the next scan sees the move and nothing new.
                ?? PathState(item: still.head.item, isDirectory: false, inode: inode, size: Int64(head.size), mtime: 0, root: head.root,
                             mode: still.head.mode)
            paths[still.path] = state
            // The index follows it out of staging: the node serves what it received.
            do {
                try p2p.folderIndex.landed(staged, at: still.path, inode: inode, size: Int64(head.size), mtime: head.mtime > 0 ? head.mtime : state.mtime)
            } catch {
                logger.warning("the index does not follow \(still.path) out of staging: \(error)")
            }
            // Recorded with the others landing now, in one transaction (one fsync per file was
            // most of what a small file cost after its download). A node killed before the write
            // finds the file where the tree shows it and claims it for its item (`scan`).
            persistSoon(still.path, state)
            // Its own events ask for no scan (FolderWatcher.expect): if the replica moved on since
            // the pass that wanted it, a pass puts it right now rather than at the next periodic
            // one. (Asking the view instead rebuilt it for every file landing while operations
            // arrived: 14% of a receiving node's CPU in bench/sync.sh.)
            if replica.generation != wantedGeneration { requestWork() }
        }
    }

    /// Tries `head` again later, waiting twice as long each time (up to a minute).
    func fetchFailed(_ head: TreeOperation.Version, at path: String, _ failure: String, quietly: Bool = false) {
        let wait = min((failedFetches[head.root]?.wait ?? .milliseconds(500)) * 2, .seconds(60))
        failedFetches[head.root] = (ContinuousClock.now + wait, wait, path, failure)
        if !quietly { logger.warning("cannot fetch \(path) (\(head.root)): \(failure); tried again in \(wait)") }
    }

    /// A full disk fails every fetch: one line a minute says so.
    func fetchFailed(_ head: TreeOperation.Version, at path: String, noRoom shortage: DiskShortage) {
        fetchFailed(head, at: path, shortage.description, quietly: true)
        let now = ContinuousClock.now
        guard lastNoRoom.map({ now - $0 >= .seconds(60) }) ?? true else { return }
        lastNoRoom = now
        logger.warning("cannot fetch \(path) (\(head.root)): \(shortage); fetches wait until there is room")
    }

    /// A peer came: what failed may come from it.
    func retryFailedFetches() {
        failedFetches = [:]
        if !wanted.isEmpty { requestWork() }
    }

    /// What waits for content (`harp storage status`): files queued, in flight, and failed
    /// (tried again later).
    var fetchState: FetchState {
        let now = ContinuousClock.now
        let recent = landings.filter { now - $0.at < .seconds(10) }
        return FetchState(pending: wanted.count, pendingBytes: wanted.values.reduce(0) { $0 + $1.head.size }, inFlight: inFlight.count,
                          inFlightBytes: inFlight.reduce(0) { $0 + (wanted[$1]?.head.size ?? 0) },
                          failures: failedFetches.values.sorted { $0.path < $1.path }.map { failure in
                              (failure.path, failure.reason, max(0, Double((failure.until - now).components.seconds)))
                          },
                          filesPerSecond: Double(recent.count) / 10, bytesPerSecond: Double(recent.reduce(0) { $0 + $1.bytes }) / 10)
    }

    struct FetchState {
        let pending: Int, pendingBytes: Int, inFlight: Int, inFlightBytes: Int
        /// Each failed fetch waiting to be tried again: the path, why, and in how many seconds.
        let failures: [(path: String, reason: String, retryIn: Double)]
        /// Over the last 10 s.
        let filesPerSecond: Double, bytesPerSecond: Double
    }

    /// Logs, once per path, why the folder could not take a change there (a symbolic link on
    /// the way, a file where a directory goes).
    func refusedPath(_ path: String, _ error: Int32) {
        guard refusedPaths.insert(path).inserted else { return }
        let reason = error == ELOOP || error == EXDEV ? "a symbolic link is on the way (links are never followed)"
            : String(cString: strerror(error == 0 || error == EEXIST ? EEXIST : error))
        logger.warning("the folder cannot take \(path): \(reason); left as it is")
    }

    /// Gets the bytes of version `head` into `.harp-staging` under its content root (a name
    /// that never overflows NAME_MAX): made when empty, copied from the version store, or
    /// fetched from the peers.
    func stage(_ head: TreeOperation.Version) async -> BlockExchangePlugin.FetchOutcome {
        let staged = stagingPath(head.root)
        _ = disk.mkdir(Self.staging, mode: 0o700)
        let stored = versionPath(head.root)
        // An empty file is made, not fetched: its content root is known (no chunks).
        if head.root == Self.emptyRoot {
            _ = disk.unlink(staged)
            let fd = disk.open(staged, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
            guard fd >= 0 else { return .failed("cannot create \(staged): \(String(cString: strerror(-fd)))") }
            close(fd)
            return .done(inode: 0)
        }
        if disk.lstat(stored) != nil, index(stored) == head.root {
            return copyFile(stored, to: staged) ? .done(inode: 0) : .failed("cannot copy \(stored)")
        }
        // Its directory is synced once it is renamed into place (`persist`), not here.
        // Asked of the node that wrote the version first: it has the bytes (unless it has
        // edited the file again since).
        return await p2p.fetch(head.root, into: folder + "/" + staged, size: head.size, holder: head.timestamp.node, syncDirectory: false)
    }

    /// Renames the staged bytes of `head` into place at `path` (beneath the folder). The bytes
    /// it replaces go to the version store as a second link first. A new file gets the
    /// version's mode (less the umask); a replaced one keeps a mode the user changed here.
    func put(_ head: TreeOperation.Version, at path: String) -> BlockExchangePlugin.FetchOutcome {
        let staged = stagingPath(head.root)
        let previous = paths[path]
        // The user may have written, moved or removed the file while the bytes were fetched:
        // that stays (the next scan makes it a version, a move or a delete). A new file never
        // replaces one made meanwhile; a replaced one only if it is still what was recorded.
        // (Renaming over a file written during the fetch lost it: the randomized real-node
        // test found it.)
        if let previous, disk.lstat(path) == nil || !unchanged(path, previous) {
            _ = disk.unlink(staged)
            return .failed("\(path) changed here while the new version was fetched: what is there stays")
        }
        var mode = mode_t(head.mode) & ~umaskBits
        if let previous, let now = disk.lstat(path), mode_t(previous.mode) != now.st_mode & 0o777 {
            mode = now.st_mode & 0o777  // changed here since recorded: the user's
        }
        _ = disk.chmod(staged, mode: mode)
        setModificationTime(staged, to: head.mtime)
        guard let landed = disk.lstat(staged) else { return .failed("the staged copy vanished") }
        let linked = previous.flatMap { old in old.root.flatMap { linkVersion(path, root: $0) ? $0 : nil } }
        expectOwn(path)
        let moved = disk.rename(staged, in: disk, to: path, replace: previous != nil)
        guard moved == 0 else {
            _ = disk.unlink(staged)
            if let linked { _ = disk.unlink(versionPath(linked)) }
            if moved == EEXIST { return .failed("a file appeared at \(path) while the new version was fetched: the local bytes stay") }
            refusedPath(path, moved)
            return .failed("cannot put it in place: \(String(cString: strerror(moved)))")
        }
        return .done(inode: Int64(landed.st_ino))
    }

    /// Tells the watcher the node is about to change these paths (relative) itself, so that
    /// their events ask for no scan. True, to sit in a condition before the change.
    @discardableResult
    func expectOwn(_ paths: String..., events: Int = 1) -> Bool {
        for path in paths { watcher?.expect(folder + "/" + path, events: events) }
        return true
    }

    /// The root of empty content (a manifest without chunks).
    static let emptyRoot = Manifest(entries: []).root

    /// Gives a received file the modification time its writer's file had, so that a file
    /// from 2020 still says 2020.
    func setModificationTime(_ path: String, to nanoseconds: Int64) {
        guard nanoseconds > 0 else { return }
        _ = disk.setModificationTime(path, nanoseconds: nanoseconds)
    }

    /// A remote change of a file's mode alone (the same content): applied unless the user
    /// changed the file here since it was recorded — its mode, or its bytes (an edit the scan
    /// has not versioned yet: recording the file's new stat under the old root would hide the
    /// edit from every later scan, and lose it).
    func applyMode(_ mode: UInt16, to path: String, recorded: PathState) {
        guard unchanged(path, recorded), let now = disk.lstat(path), now.st_mode & 0o777 == mode_t(recorded.mode) else { return }
        expectOwn(path)
        guard disk.chmod(path, mode: mode_t(mode) & ~umaskBits) == 0, let state = state(path, item: recorded.item, root: recorded.root) else { return }
        paths[path] = state
        persistSoon(path, state)
    }

    /// Empties the staging directory at start, but for the partial files of the downloads
    /// that resume (`BlockExchangePlugin.resumablePartialFiles`): what a kill left there is
    /// fetched or copied again anyway, and a one-chunk download has no record to resume from.
    func sweepStaging() {
        guard let kept = p2p.resumablePartialFiles(), let entries = disk.entries(Self.staging) else { return }
        for entry in entries where entry.info.st_mode & S_IFMT == S_IFREG && !kept.contains(folder + "/" + Self.staging + "/" + entry.name) {
            _ = disk.unlink(Self.staging + "/" + entry.name)
        }
    }

    /// Where the bytes of `root` wait before they are renamed into place (relative).
    func stagingPath(_ root: ChunkID) -> String { Self.staging + "/" + root.description }

    /// Where fetched files wait to be renamed into place (relative to the folder; hidden, and
    /// a name no peer can send).
    static let staging = ".harp-staging"

    /// Copies `from` to `to` (both relative, beneath the folder), replacing `to`.
    func copyFile(_ from: String, to: String) -> Bool {
        let source = disk.open(from, flags: O_RDONLY | O_NOFOLLOW)
        guard source >= 0 else { return false }
        defer { close(source) }
        _ = disk.unlink(to)
        let target = disk.open(to, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
        guard target >= 0 else { return false }
        defer { close(target) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = read(source, &buffer, buffer.count)
            if count == 0 { return fsync(target) == 0 }
            guard count > 0, buffer.withUnsafeBytes({ write(target, $0.baseAddress, count) }) == count else { return false }
        }
    }

    /// Whether the file at `path` is still what `state` recorded (or gone).
    func unchanged(_ path: String, _ state: PathState) -> Bool {
        guard let now = self.state(path, item: state.item, root: state.root) else { return true }
        return now.inode == state.inode && now.size == state.size && now.mtime == state.mtime
    }

    /// What is at `path` (relative) now, as a record of `item`; nil when nothing is there, or
    /// it is not a regular file or directory (a link is never taken for what it points at).
    func state(_ path: String, item: ItemID, root: ChunkID?) -> PathState? {
        guard let info = disk.lstat(path) else { return nil }
        return PathState(info, item: item, root: root)
    }
}
