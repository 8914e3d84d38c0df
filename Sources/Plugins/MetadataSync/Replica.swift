import BlockExchange

/// An operation as the log keeps and peers exchange it: numbered per origin node, so that two
/// peers can tell each other what they lack with one counter per origin (delta anti-entropy).
public struct LoggedOperation: Hashable, Sendable {
    public let origin: NodeID
    public let sequence: UInt64
    public let operation: TreeOperation

    public init(origin: NodeID, sequence: UInt64, operation: TreeOperation) {
        self.origin = origin
        self.sequence = sequence
        self.operation = operation
    }
}

/// One node's copy of the metadata: the tree, the histories, every operation by origin, and
/// the clock. Applying the same set of operations in any order, any number of times, gives
/// the same replica — the property the tests check with thousands of random operations.
public struct Replica: Sendable {
    public let node: NodeID
    public private(set) var clock: HybridLogicalClock
    public private(set) var tree = ReplicatedTree()
    public private(set) var histories = FileHistories()
    /// Operations by origin, indexed by sequence (1-based; holes while out of order).
    private var operations: [NodeID: [UInt64: LoggedOperation]] = [:]
    /// Per origin, the highest sequence below which nothing is missing.
    public private(set) var vector: [NodeID: UInt64] = [:]

    public init(node: NodeID, wall: UInt64 = 0, counter: UInt32 = 0) {
        self.node = node
        clock = HybridLogicalClock(node: node, wall: wall, counter: counter)
    }

    public func contains(_ logged: LoggedOperation) -> Bool { operations[logged.origin]?[logged.sequence] != nil }

    // MARK: Remote

    /// Applies operations from peers (or a log replay): new ones only, moves as one batch.
    public mutating func apply(_ batch: [LoggedOperation]) {
        var moves: [TreeOperation.Move] = []
        for logged in batch {
            guard operations[logged.origin]?[logged.sequence] == nil else { continue }
            operations[logged.origin, default: [:]][logged.sequence] = logged
            var contiguous = vector[logged.origin] ?? 0
            while operations[logged.origin]?[contiguous + 1] != nil { contiguous += 1 }
            vector[logged.origin] = contiguous
            clock.observe(logged.operation.timestamp)
            switch logged.operation {
            case .move(let move): moves.append(move)
            case .version(let version): histories.apply(version)
            }
        }
        tree.apply(moves)
    }

    /// What a peer whose vector is `theirs` lacks, oldest first per origin.
    public func missing(for theirs: [NodeID: UInt64]) -> [LoggedOperation] {
        var out: [LoggedOperation] = []
        for (origin, byNumber) in operations {
            let known = theirs[origin] ?? 0
            out += byNumber.values.filter { $0.sequence > known }.sorted { $0.sequence < $1.sequence }
        }
        return out
    }

    public var operationCount: Int { operations.values.reduce(0) { $0 + $1.count } }

    /// Every operation (for checks and full re-application).
    public var allOperations: [LoggedOperation] { operations.values.flatMap(\.values) }

    // MARK: Local

    /// Records and applies a local operation made at `now` (ms); returns it for the peers.
    @discardableResult
    public mutating func local(now: UInt64, _ make: (HLCTimestamp) -> TreeOperation) -> LoggedOperation {
        let timestamp = clock.tick(now: now)
        let sequence = (operations[node]?.keys.max() ?? 0) + 1
        let logged = LoggedOperation(origin: node, sequence: sequence, operation: make(timestamp))
        apply([logged])
        return logged
    }
}
