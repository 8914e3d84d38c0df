import BlockExchange

/// Where one node's change lost to another's, or overruled it, lately — what `harp storage
/// status` lists, so that no losing side is silent:
/// - a version written from an older one than the version before it (concurrent edits): both
///   stay in the history, the later is the head, the earlier lost;
/// - a delete that a later edit or move overruled: the file is back;
/// - an edit that a delete on another node removed within `window` of it (`max_clock_skew`:
///   clocks cannot order changes that close, so the delete may not have seen it); its bytes
///   are in the deleted file's history (`harp storage history`, `restore`).
struct Conflict: Sendable, Equatable {
    enum Kind: String, Sendable {
        case concurrentEdit = "concurrent_edit"
        case deleteOverruled = "delete_overruled"
        case editDeleted = "edit_deleted"
    }

    let path: String
    let kind: Kind
    /// The change that decided (the later one).
    let won: HLCTimestamp
    /// The change that lost.
    let lost: HLCTimestamp

    var json: [String: Any] {
        ["path": path, "kind": kind.rawValue, "time_ms": Int(won.wall), "won": "\(won.node)", "lost": "\(lost.node)",
         "lost_time_ms": Int(lost.wall)]
    }

    /// The conflicts `view` shows that were decided at or after `since` (ms), newest first,
    /// at most `limit`.
    static func recent(in view: FolderView, since: UInt64, window: UInt64, limit: Int = 100) -> [Conflict] {
        var found: [Conflict] = []
        for entry in view.entries.values where !entry.isDirectory {
            for (index, step) in entry.history.enumerated() where step.concurrent && step.version.timestamp.wall >= since {
                found.append(Conflict(path: entry.path, kind: .concurrentEdit, won: step.version.timestamp,
                                      lost: entry.history[index - 1].version.timestamp))
            }
        }
        for (path, deletion) in view.overruled {
            guard let entry = view.entries[path] else { continue }
            let won = entry.head.map { max($0.timestamp, deletion) } ?? deletion
            guard won.wall >= since else { continue }
            found.append(Conflict(path: path, kind: .deleteOverruled, won: won, lost: deletion))
        }
        for entry in view.deleted.values where !entry.isDirectory {
            guard let deletion = entry.deletion, deletion.wall >= since, let head = entry.head?.timestamp,
                  head.node != deletion.node, head < deletion, deletion.wall - head.wall <= window else { continue }
            found.append(Conflict(path: entry.path, kind: .editDeleted, won: deletion, lost: head))
        }
        return Array(found.sorted { $0.won > $1.won }.prefix(limit))
    }
}
