/// The folder tree as Kleppmann et al. define it ("A highly-available move operation for
/// replicated trees", 2021): the state is what applying every `Move` in timestamp order gives,
/// where a move that would put a node under itself (a cycle) is skipped but kept in the log.
/// An operation that arrives late is slotted in by undoing the later ones, doing it, and
/// redoing them — so every replica that applied the same moves has the same tree, whatever
/// the order they came in.
public struct ReplicatedTree: Sendable, Equatable {
    public struct Placement: Hashable, Sendable {
        public let parent: ItemID
        public let name: String
        public let isDirectory: Bool
        /// The timestamp of the move that put it there: a move into a directory deleted
        /// before it (in K order) brings that directory back (`FolderView`).
        public let at: HLCTimestamp

        public init(parent: ItemID, name: String, isDirectory: Bool, at: HLCTimestamp) {
            self.parent = parent
            self.name = name
            self.isDirectory = isDirectory
            self.at = at
        }

        init(_ move: TreeOperation.Move) {
            self.init(parent: move.parent, name: move.name, isDirectory: move.isDirectory, at: move.timestamp)
        }
    }

    /// One applied move with what it replaced (for undo), and whether it took effect.
    struct LogEntry: Sendable, Equatable {
        let move: TreeOperation.Move
        let previous: Placement?
        let applied: Bool
    }

    /// Where a deleted item was before it went into the trash, and when it last went in: the
    /// delete-vs-edit rule brings it back there when a version of it is newer.
    public struct Deletion: Equatable, Sendable {
        public let was: Placement
        public var at: HLCTimestamp
    }

    /// What settling a prefix of the log left behind: the dropped moves, and for each item
    /// they touched its placement and deletion after them (nil: not deleted) — what a
    /// restarted node starts from instead of those moves.
    public struct Settlement: Sendable {
        public var moves: [TreeOperation.Move] = []
        public var placements: [ItemID: Placement] = [:]
        public var deletions: [ItemID: Deletion?] = [:]
    }

    public private(set) var placements: [ItemID: Placement] = [:]
    /// Every move after the settled point, in timestamp order.
    private(set) var log: [LogEntry] = []
    private var seen: Set<HLCTimestamp> = []
    /// The deletions as the settled (dropped) moves left them.
    private var settledDeletions: [ItemID: Deletion] = [:]

    public init() {}

    /// A tree that starts from settled state (a restarted node's; its later moves follow).
    public init(settled placements: [ItemID: Placement], deletions: [ItemID: Deletion]) {
        self.placements = placements
        settledDeletions = deletions
    }

    /// Applies moves in any order; ones already applied are ignored. Undoes the log back to
    /// the earliest new timestamp once, then redoes everything after it in order.
    public mutating func apply(_ moves: [TreeOperation.Move]) {
        let fresh = moves.filter { seen.insert($0.timestamp).inserted }.sorted { $0.timestamp < $1.timestamp }
        guard let earliest = fresh.first?.timestamp else { return }
        var undone: [TreeOperation.Move] = []
        while let last = log.last, earliest < last.move.timestamp {
            log.removeLast()
            undo(last)
            undone.append(last.move)
        }
        let kept = log.count
        // Merge the undone (descending, so reversed) with the fresh ones, in timestamp order.
        var redo = undone.reversed().makeIterator(), next = redo.next()
        for move in fresh {
            while let pending = next, pending.timestamp < move.timestamp {
                perform(pending)
                next = redo.next()
            }
            perform(move)
        }
        while let pending = next {
            perform(pending)
            next = redo.next()
        }
        // The log stays in timestamp order: what was kept, then what was redone after it.
        assert(zip(log[max(kept, 1) - 1..<log.count], log[max(kept, 1)...]).allSatisfy { $0.move.timestamp < $1.move.timestamp },
               "the move log is out of order after apply")
    }

    private mutating func perform(_ move: TreeOperation.Move) {
        let previous = placements[move.item]
        let reserved = move.item == .root || move.item == .trash
        let cycle = move.item == move.parent || isAncestor(move.item, of: move.parent)
        let applied = !reserved && !cycle
        if applied { placements[move.item] = Placement(move) }
        log.append(LogEntry(move: move, previous: previous, applied: applied))
    }

    private mutating func undo(_ entry: LogEntry) {
        guard entry.applied else { return }
        placements[entry.move.item] = entry.previous
    }

    /// Whether `ancestor` is `item`'s parent, or its parent's, and so on up to the root. The
    /// tree is acyclic by construction (and settled states are checked: `problem(in:)`); were
    /// it not, the walk would end after as many steps as there are items and answer yes — a
    /// move is then skipped, never a crash.
    public func isAncestor(_ ancestor: ItemID, of item: ItemID) -> Bool {
        var current = item
        var steps = 0
        while let placement = placements[current] {
            if placement.parent == ancestor { return true }
            current = placement.parent
            steps += 1
            if steps > placements.count {
                assertionFailure("a cycle in the replicated tree")
                return true
            }
        }
        return false
    }

    /// Why `placements` (a peer's settled state) are not a tree, or nil: a placement of the
    /// root or the trash, or one whose parents never reach the root or the trash (a cycle, or
    /// a parent nobody placed).
    public static func problem(in placements: [ItemID: Placement]) -> TreeProblem? {
        var reaches: [ItemID: Bool] = [.root: true, .trash: true]
        for start in placements.keys {
            if start == .root || start == .trash { return .placesReserved(start) }
            var path: [ItemID] = []
            var current = start
            while reaches[current] == nil {
                guard let placement = placements[current], path.count <= placements.count else { return .unrooted(start) }
                path.append(current)
                current = placement.parent
            }
            guard reaches[current] == true else { return .unrooted(start) }
            for item in path { reaches[item] = true }
        }
        return nil
    }

    /// Why placements are not a tree.
    public enum TreeProblem: Sendable, Equatable, CustomStringConvertible {
        /// A placement of the root or the trash (they are never moved).
        case placesReserved(ItemID)
        /// An item whose parents never reach the root or the trash: a cycle, or a parent
        /// nobody placed.
        case unrooted(ItemID)

        public var description: String {
            switch self {
            case .placesReserved(let item): "it places the \(item) item"
            case .unrooted(let item): "\(item) does not reach the root (a cycle, or a parent it never places)"
            }
        }
    }

    /// Every deleted item's last place outside the trash and when it was deleted (for the
    /// view's delete-vs-edit rule).
    public func deletions() -> [ItemID: Deletion] {
        var deletions = settledDeletions
        for entry in log where entry.applied { Self.note(entry, in: &deletions) }
        return deletions
    }

    private static func note(_ entry: LogEntry, in deletions: inout [ItemID: Deletion]) {
        let move = entry.move
        if move.parent != .trash {
            deletions[move.item] = nil
        } else if let was = entry.previous, was.parent != .trash {
            deletions[move.item] = Deletion(was: was, at: move.timestamp)
        } else {
            deletions[move.item]?.at = move.timestamp
        }
    }

    /// Drops the oldest moves while `isSettled` holds for them. The caller answers for the
    /// rule that makes this safe: no replica can still send a move stamped before them (a
    /// move that arrived late would have to be slotted in below the log, which is gone), and
    /// every replica holds them (none will ask for them again).
    public mutating func settle(while isSettled: (TreeOperation.Move) -> Bool) -> Settlement {
        var count = 0
        while count < log.count, isSettled(log[count].move) { count += 1 }
        var settlement = Settlement()
        for entry in log[..<count] {
            let move = entry.move
            seen.remove(move.timestamp)
            settlement.moves.append(move)
            guard entry.applied else { continue }
            settlement.placements[move.item] = Placement(move)
            Self.note(entry, in: &settledDeletions)
            settlement.deletions.updateValue(settledDeletions[move.item], forKey: move.item)
        }
        log.removeFirst(count)
        // A prefix was cut: every move left is later than every settled one.
        assert(settlement.moves.last.map { last in log.first.map { last.timestamp < $0.move.timestamp } ?? true } ?? true,
               "settle cut something other than a prefix of the log")
        return settlement
    }

    public var moveCount: Int { log.count }

    /// Whether a move stamped `timestamp` is in the log.
    func holds(_ timestamp: HLCTimestamp) -> Bool { seen.contains(timestamp) }

}
