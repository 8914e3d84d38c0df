import BlockExchange
import CoreMetrics
import CShims
import Foundation
import Glibc
import HarpKernel
import Logging

extension MetadataNode {
    // MARK: The version store

    /// Moves a replaced or removed file into the version store (`FOLDER/.harp-versions/ROOT`)
    /// and indexes it there, so its bytes stay retrievable — here and from every peer. False
    /// (and the file left in place, logged) when its bytes cannot be kept: a delete never
    /// destroys the only copy.
    func keepVersion(_ path: String, root: ChunkID?) -> Bool {
        expectOwn(path)
        guard let root else { return disk.unlink(path) == 0 }
        _ = disk.mkdir(FolderIndex.versionStore, mode: 0o700)
        let moved = disk.rename(path, in: disk, to: versionPath(root))
        guard moved == 0 else {
            logger.warning("cannot keep the bytes of \(path) in the version store (\(String(cString: strerror(moved)))): the file stays where it is")
            return false
        }
        _ = index(versionPath(root))
        return true
    }

    /// Links a file about to be replaced into the version store (indexed there); false when
    /// the store has that version already or the link fails.
    func linkVersion(_ path: String, root: ChunkID) -> Bool {
        _ = disk.mkdir(FolderIndex.versionStore, mode: 0o700)
        guard disk.link(path, to: versionPath(root), in: disk) == 0 else { return false }
        _ = index(versionPath(root))
        return true
    }

    /// Applies the version store's retention (`VersionRetention`), at most once per
    /// `rescan_interval`.
    func pruneVersions() {
        let now = ContinuousClock.now
        guard lastPrune.map({ now - $0 >= configuration.rescanInterval.duration }) ?? true else { return }
        lastPrune = now
        guard let entries = disk.entries(FolderIndex.versionStore) else {
            versionStore.files = 0
            versionStore.bytes = 0
            return
        }
        let stored = entries.compactMap { name, info -> VersionRetention.Stored? in
            guard let root = ChunkID(hex: name), info.st_mode & S_IFMT == S_IFREG else { return nil }
            return .init(root: root, bytes: Int64(info.st_size), storedAt: Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec))
        }
        var volume = statvfs()
        let total = statvfs(folder, &volume) == 0 ? Int64(volume.f_blocks) * Int64(volume.f_frsize) : Int64.max
        let retention = VersionRetention(keep: configuration.keepVersions, keepFor: Int64(configuration.keepVersionsFor.duration.nanoseconds),
                                         capacity: configuration.versionStoreMax.bytes(of: total))
        let pruned = retention.pruned(stored, ranks: VersionRetention.ranks(view()), now: Int64(Date().timeIntervalSince1970 * 1e9))
        var gone: Set<ChunkID> = []
        for version in pruned where disk.unlink(versionPath(version.root)) == 0 {
            gone.insert(version.root)
            versionStore.prunedFiles += 1
            versionStore.prunedBytes += version.bytes
            try? p2p.folderIndex.forget(versionPath(version.root))
        }
        if !gone.isEmpty { logger.info("the version store's retention removed \(gone.count) version\(gone.count == 1 ? "" : "s")") }
        let left = stored.filter { !gone.contains($0.root) }
        versionStore.files = left.count
        versionStore.bytes = left.reduce(0) { $0 + $1.bytes }
    }

    /// Makes sure the bytes of `root` are here — in the folder, in the version store, or
    /// fetched from a peer into the store — or says why not.
    func keepForRestore(_ root: ChunkID) async -> String? {
        if root == Self.emptyRoot || paths.values.contains(where: { $0.root == root }) || disk.lstat(versionPath(root)) != nil { return nil }
        let staged = stagingPath(root)
        _ = disk.mkdir(Self.staging, mode: 0o700)
        switch await p2p.fetch(root, into: folder + "/" + staged) {
        case .done:
            break
        case .noRoom(let shortage):
            return "its bytes are not kept here, and fetching them failed: \(shortage)"
        case .failed(let failure):
            return "its bytes are not kept here and no connected peer sent them (\(failure)); the version stores' retention ([crdt] keep_versions) may have removed them everywhere"
        }
        _ = disk.mkdir(FolderIndex.versionStore, mode: 0o700)
        guard disk.rename(staged, in: disk, to: versionPath(root)) == 0 else { return "the fetched bytes could not be stored" }
        _ = index(versionPath(root))
        return nil
    }

    /// A version's place in the store, relative to the folder.
    func versionPath(_ root: ChunkID) -> String { FolderIndex.versionStore + "/" + root.description }
}
