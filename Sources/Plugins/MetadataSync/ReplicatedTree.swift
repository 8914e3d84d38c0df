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
    }

    /// One applied move with what it replaced (for undo), and whether it took effect.
    struct LogEntry: Sendable, Equatable {
        let move: TreeOperation.Move
        let previous: Placement?
        let applied: Bool
    }

    public private(set) var placements: [ItemID: Placement] = [:]
    /// Every move in timestamp order (never truncated yet: the causally stable point is the
    /// sync layer's to find).
    private(set) var log: [LogEntry] = []
    private var seen: Set<HLCTimestamp> = []

    public init() {}

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
    }

    private mutating func perform(_ move: TreeOperation.Move) {
        let previous = placements[move.item]
        let reserved = move.item == .root || move.item == .trash
        let cycle = move.item == move.parent || isAncestor(move.item, of: move.parent)
        let applied = !reserved && !cycle
        if applied { placements[move.item] = Placement(parent: move.parent, name: move.name, isDirectory: move.isDirectory) }
        log.append(LogEntry(move: move, previous: previous, applied: applied))
    }

    private mutating func undo(_ entry: LogEntry) {
        guard entry.applied else { return }
        placements[entry.move.item] = entry.previous
    }

    /// Whether `ancestor` is `item`'s parent, or its parent's, and so on up to the root.
    public func isAncestor(_ ancestor: ItemID, of item: ItemID) -> Bool {
        var current = item
        var steps = 0
        while let placement = placements[current] {
            if placement.parent == ancestor { return true }
            current = placement.parent
            steps += 1
            // The tree is acyclic by construction; the bound only makes that visible.
            precondition(steps <= placements.count, "a cycle in the replicated tree")
        }
        return false
    }

    /// The applied moves in timestamp order (for the view's delete-vs-edit rule).
    var appliedMoves: [TreeOperation.Move] { log.filter(\.applied).map(\.move) }

    public var moveCount: Int { log.count }
}
