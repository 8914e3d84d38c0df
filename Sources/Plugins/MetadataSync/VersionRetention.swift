import BlockExchange

/// What the version store (`FOLDER/.harp-versions`, one file per content root: the bytes of
/// replaced and deleted versions) keeps: per file, its `keep` newest versions that are not
/// what the folder shows — a deleted file's last content counts as its newest — none stored
/// longer than `keepFor`, and all of it within `capacity` bytes (the oldest stored go first).
/// The history keeps every version; a pruned one is restored from a peer that still has it.
struct VersionRetention {
    let keep: Int
    /// Nanoseconds.
    let keepFor: Int64
    let capacity: Int64

    /// One file of the store.
    struct Stored: Equatable {
        let root: ChunkID
        let bytes: Int64
        /// When it went into the store (its status-change time: the rename or link), ns.
        let storedAt: Int64
    }

    /// How far back each content root is among the versions of the files it belongs to (0:
    /// the newest not shown; the smallest where it is a version of several).
    static func ranks(_ view: FolderView) -> [ChunkID: Int] {
        var ranks: [ChunkID: Int] = [:]
        func note(_ entry: FolderView.Entry, shown: Bool) {
            var rank = 0
            for step in entry.history.reversed() where !(shown && step.head) {
                ranks[step.version.root] = min(ranks[step.version.root] ?? rank, rank)
                rank += 1
            }
        }
        for entry in view.entries.values where !entry.isDirectory { note(entry, shown: true) }
        for entry in view.deleted.values where !entry.isDirectory { note(entry, shown: false) }
        return ranks
    }

    /// The stored versions to remove at `now` (ns). A root no history names is kept by age
    /// and room alone.
    func pruned(_ stored: [Stored], ranks: [ChunkID: Int], now: Int64) -> [Stored] {
        var kept: [Stored] = [], out: [Stored] = []
        for version in stored {
            if ranks[version.root] ?? 0 >= keep || now - version.storedAt > keepFor { out.append(version) } else { kept.append(version) }
        }
        var total = kept.reduce(Int64(0)) { $0 + $1.bytes }
        for version in kept.sorted(by: { $0.storedAt < $1.storedAt }) where total > capacity {
            out.append(version)
            total -= version.bytes
        }
        return out
    }
}
