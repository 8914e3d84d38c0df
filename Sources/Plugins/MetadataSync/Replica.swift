import BlockExchange
import HarpKernel

/// An operation as the log keeps and peers exchange it: numbered per origin node, so that two
/// peers can tell each other what they lack with one counter per origin (delta anti-entropy).
/// An operation is its origin, sequence and content; `chain` and `proof` say it is the
/// origin's (`OperationChain`) and are left out of equality.
public struct LoggedOperation: Hashable, Sendable {
    public let origin: NodeID
    public let sequence: UInt64
    public let operation: TreeOperation
    /// The origin's chain hash through this operation (set once made or verified here).
    public var chain: [UInt8]?
    /// The origin's signature over `chain`, on the last operation of each run it signed.
    public var proof: OperationProof?

    public init(origin: NodeID, sequence: UInt64, operation: TreeOperation, chain: [UInt8]? = nil, proof: OperationProof? = nil) {
        self.origin = origin
        self.sequence = sequence
        self.operation = operation
        self.chain = chain
        self.proof = proof
    }

    public static func == (a: LoggedOperation, b: LoggedOperation) -> Bool {
        a.origin == b.origin && a.sequence == b.sequence && a.operation == b.operation
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(origin)
        hasher.combine(sequence)
        hasher.combine(operation)
    }
}

/// An origin's signature (Ed25519, its node key) and the public key it verifies with: the key
/// travels with the signature, because an operation may come through a relay from a node the
/// receiver never met; the key's SHA-256 must be the origin's node ID.
public struct OperationProof: Hashable, Sendable {
    public let publicKey: [UInt8]
    public let signature: [UInt8]

    public init(publicKey: [UInt8], signature: [UInt8]) {
        self.publicKey = publicKey
        self.signature = signature
    }
}

/// One node's copy of the metadata: the tree, the histories, every operation by origin, and
/// the clock. Applying the same set of operations in any order, any number of times, gives
/// the same replica — the property the tests check with thousands of random operations.
public struct Replica: Sendable {
    public let node: NodeID
    public private(set) var clock: HybridLogicalClock
    public private(set) var tree = ReplicatedTree() { didSet { generation &+= 1 } }
    public private(set) var histories = FileHistories() { didSet { generation &+= 1 } }
    /// Changes whenever the tree or the histories do: a view of them built at one generation
    /// holds until the next (`MetadataNode.currentView`).
    public private(set) var generation = 0
    /// Operations by origin, indexed by sequence (1-based; holes while out of order).
    private var operations: [NodeID: [UInt64: LoggedOperation]] = [:]
    /// Per origin, the highest sequence below which nothing is missing.
    public private(set) var vector: [NodeID: UInt64] = [:]
    /// Per origin, the sequence at or below which every replica holds every operation; the
    /// settled moves among them are no longer kept.
    public private(set) var floor: [NodeID: UInt64] = [:]
    /// Where each move still in the tree's log came from (settling asks who holds it).
    private var moveNumbers: [HLCTimestamp: Number] = [:]
    /// Moves that arrived stamped before the settled point: none can, if the settle rule is
    /// right and no peer lost its state (the tests count them).
    public private(set) var lateMoves = 0
    public private(set) var settledMoves = 0
    /// The newest move settled so far (this run).
    private var lastSettled: HLCTimestamp?
    /// Per origin, its chain through the last operation held in order (`OperationChain`):
    /// where the next proven run must continue.
    private(set) var heads: [NodeID: OperationChain.Head] = [:]

    struct Number: Hashable, Sendable {
        let origin: NodeID
        let sequence: UInt64
    }

    public init(node: NodeID, wall: UInt64 = 0, counter: UInt32 = 0) {
        self.node = node
        clock = HybridLogicalClock(node: node, wall: wall, counter: counter)
    }

    /// A replica as `OperationLog` recorded it: the settled state, then the operations kept
    /// (those at or below the floor too: it is the log itself being read back).
    public init(node: NodeID, wall: UInt64, counter: UInt32, settled: Settled, operations: [LoggedOperation]) {
        self.init(node: node, wall: wall, counter: counter)
        tree = ReplicatedTree(settled: settled.placements, deletions: settled.deletions)
        vector = settled.floor
        for (origin, hash) in settled.floorChains { heads[origin] = OperationChain.Head(sequence: settled.floor[origin] ?? 0, hash: hash) }
        apply(operations)
        floor = settled.floor
        floorChains = settled.floorChains
        // Each chain continues from the last operation held in order (its hash is stored with it).
        for (origin, sequence) in vector where sequence > heads[origin]?.sequence ?? 0 {
            if let hash = self.operations[origin]?[sequence]?.chain { heads[origin] = OperationChain.Head(sequence: sequence, hash: hash) }
        }
    }

    /// Per origin, its chain hash at the floor: where a node that takes this replica's settled
    /// state continues that origin's chain.
    public private(set) var floorChains: [NodeID: [UInt8]] = [:]

    /// The settled state a node keeps in place of the moves it dropped.
    public struct Settled: Sendable {
        public var placements: [ItemID: ReplicatedTree.Placement] = [:]
        public var deletions: [ItemID: ReplicatedTree.Deletion] = [:]
        public var floor: [NodeID: UInt64] = [:]
        public var floorChains: [NodeID: [UInt8]] = [:]
        public init() {}
    }

    /// Records proven chain heads (`OperationChain.verify`) after their operations are applied.
    mutating func advance(_ proven: [NodeID: OperationChain.Head]) {
        for (origin, head) in proven where head.sequence > heads[origin]?.sequence ?? 0 { heads[origin] = head }
    }

    /// Chains and signs operations this node just made (`local`), in place: what is kept and
    /// sent carries the proof.
    mutating func seal(_ made: [LoggedOperation], key: Ed25519.PrivateKey) -> [LoggedOperation] {
        guard let first = made.first else { return [] }
        let start = heads[node] ?? OperationChain.Head(sequence: first.sequence - 1, hash: OperationChain.start(node))
        precondition(start.sequence + 1 == first.sequence, "this node's operations are sealed in order")
        let sealed = OperationChain.sign(made, from: start, key: key)
        for logged in sealed { operations[node]?[logged.sequence] = logged }
        heads[node] = OperationChain.Head(sequence: sealed.last!.sequence, hash: sealed.last!.chain!)
        return sealed
    }

    public func contains(_ logged: LoggedOperation) -> Bool {
        logged.sequence <= floor[logged.origin] ?? 0 || operations[logged.origin]?[logged.sequence] != nil
    }

    // MARK: Remote

    /// Applies operations from peers (or a log replay): new ones only, moves as one batch.
    public mutating func apply(_ batch: [LoggedOperation]) {
        var moves: [TreeOperation.Move] = []
        for logged in batch {
            guard !contains(logged) else { continue }
            operations[logged.origin, default: [:]][logged.sequence] = logged
            if logged.origin == node { highestOwn = max(highestOwn, logged.sequence) }
            var contiguous = vector[logged.origin] ?? 0  // only ever grows: a vector never decreases
            while operations[logged.origin]?[contiguous + 1] != nil { contiguous += 1 }
            vector[logged.origin] = contiguous
            clock.observe(logged.operation.timestamp)
            switch logged.operation {
            case .move(let move):
                moves.append(move)
                moveNumbers[move.timestamp] = Number(origin: logged.origin, sequence: logged.sequence)
                if let lastSettled, move.timestamp < lastSettled { lateMoves += 1 }
            case .version(let version): histories.apply(version)
            }
        }
        tree.apply(moves)
        assert(floorWithinVector, "a floor passed the vector after apply")
    }

    /// The floor never passes the vector: what settled was held first.
    private var floorWithinVector: Bool { floor.allSatisfy { $0.value <= vector[$0.key] ?? 0 } }

    /// What a peer whose vector is `theirs` lacks, oldest first per origin. (A peer below the
    /// floor lost its state: the settled moves it lacks are gone; it gets the rest.)
    public func missing(for theirs: [NodeID: UInt64]) -> [LoggedOperation] {
        var out: [LoggedOperation] = []
        for (origin, byNumber) in operations {
            let known = theirs[origin] ?? 0
            out += byNumber.values.filter { $0.sequence > known }.sorted { $0.sequence < $1.sequence }
        }
        return out
    }

    /// Whether a peer whose vector is `theirs` lacks operations this replica has settled.
    public func lacksSettled(_ theirs: [NodeID: UInt64]) -> Bool {
        floor.contains { $0.value > theirs[$0.key] ?? 0 }
    }

    public var operationCount: Int { operations.values.reduce(0) { $0 + $1.count } }

    /// Every operation (for checks and full re-application).
    public var allOperations: [LoggedOperation] { operations.values.flatMap(\.values) }

    // MARK: Local

    /// Records and applies a local operation stamped `timestamp` (`ChangeTime`: a change found
    /// after it happened, so possibly before the clock). A timestamp the item's moves or
    /// versions already hold moves on by one counter step; the clock moves past it.
    @discardableResult
    public mutating func local(stamped timestamp: HLCTimestamp, _ make: (HLCTimestamp) -> TreeOperation) -> LoggedOperation {
        var stamp = timestamp
        while tree.holds(stamp) || histories.versions[make(stamp).item]?.contains(where: { $0.timestamp == stamp }) == true {
            stamp = stamp.counter == .max ? HLCTimestamp(wall: stamp.wall + 1, counter: ChangeTime.foundCounters, node: node)
                : HLCTimestamp(wall: stamp.wall, counter: stamp.counter + 1, node: node)
        }
        clock.observe(stamp)
        let logged = LoggedOperation(origin: node, sequence: nextSequence, operation: make(stamp))
        apply([logged])
        return logged
    }

    /// Past every number this node is known to have used (held, settled, or its own
    /// operations' gaps after a lost state directory).
    private var nextSequence: UInt64 { max(vector[node] ?? 0, floor[node] ?? 0, highestOwn) + 1 }
    /// The highest number among this node's own operations ever held (kept, not searched for:
    /// a maximum over every own operation per local change was 11% of a node's CPU while
    /// 20,000 new files were recorded).
    private var highestOwn: UInt64 = 0

    /// Records and applies a local operation made at `now` (ms); returns it for the peers.
    @discardableResult
    public mutating func local(now: UInt64, _ make: (HLCTimestamp) -> TreeOperation) -> LoggedOperation {
        let timestamp = clock.tick(now: now)
        let logged = LoggedOperation(origin: node, sequence: nextSequence, operation: make(timestamp))
        apply([logged])
        return logged
    }
}

// MARK: Settling (truncating the log below the causally stable point)

extension Replica {
    /// The chain hash stored with `origin`'s operation `sequence`, held or just dropped.
    fileprivate func operationChain(_ origin: NodeID, _ sequence: UInt64, dropped: [LoggedOperation]) -> [UInt8]? {
        if let hash = operations[origin]?[sequence]?.chain { return hash }
        if let head = heads[origin], head.sequence == sequence { return head.hash }
        return dropped.first { $0.origin == origin && $0.sequence == sequence }?.chain
    }
}

extension Replica {
    /// Takes a peer's settled state: for a replica that has settled nothing itself and lacks
    /// moves the peer settled (a node that joined after they were dropped, so no peer can send
    /// them any more), with the operations the peer keeps at or below its floor. The tree
    /// starts from that state, the held moves it covers are dropped, and every other operation
    /// is applied again; the clock moves past `clock` (the peer's, which is past every settled
    /// move). Returns the dropped moves, or nil when the state does not apply.
    public mutating func install(_ settled: Settled, operations below: [LoggedOperation], clock peerClock: HLCTimestamp) -> [LoggedOperation]? {
        guard floor.isEmpty, settled.floor.contains(where: { $0.value > vector[$0.key] ?? 0 }) else { return nil }
        var kept: [LoggedOperation] = [], dropped: [LoggedOperation] = []
        var held = Set(allOperations.map { Number(origin: $0.origin, sequence: $0.sequence) })
        for logged in allOperations + below.filter({ held.insert(Number(origin: $0.origin, sequence: $0.sequence)).inserted }) {
            if case .move = logged.operation, logged.sequence <= settled.floor[logged.origin] ?? 0 {
                dropped.append(logged)
            } else {
                kept.append(logged)
            }
        }
        var clock = self.clock
        clock.observe(peerClock)
        self = Replica(node: node, wall: clock.wall, counter: clock.counter, settled: settled, operations: kept)
        return dropped
    }

    /// Drops the moves below the causally stable point, given the latest vector of every
    /// replica `reports` knows of. A move is dropped when every replica's vector covers it,
    /// while this replica holds every operation any replica reported holding (so also what
    /// each had made when it reported, and what came from nodes that are no replica now).
    /// Then no move can still arrive stamped before it: a replica that has received a move
    /// has a clock past it, so what it makes later is stamped later, and what it made before
    /// is here already. The tree never has to undo it, and no peer will ask for it again.
    /// Older moves go with it (the log is cut at a point, never punched). Returns nil when a
    /// replica has not reported or nothing settles.
    public mutating func settle(_ reports: ReplicaReports) -> (settlement: ReplicatedTree.Settlement, dropped: [LoggedOperation])? {
        var all = [vector]
        for peer in reports.replicas where peer != node {
            guard let theirs = reports.vectors[peer], theirs.allSatisfy({ vector[$0.key] ?? 0 >= $0.value }) else { return nil }
            all.append(theirs)
        }
        var common: [NodeID: UInt64] = [:]
        for origin in Set(all.flatMap(\.keys)) { common[origin] = all.map { $0[origin] ?? 0 }.min() }
        let numbers = moveNumbers
        let settlement = tree.settle { move in
            guard let number = numbers[move.timestamp] else { return false }
            return number.sequence <= common[number.origin] ?? 0
        }
        guard !settlement.moves.isEmpty else { return nil }
        var dropped: [LoggedOperation] = []
        for move in settlement.moves {
            guard let number = moveNumbers.removeValue(forKey: move.timestamp),
                  let logged = operations[number.origin]?.removeValue(forKey: number.sequence) else { continue }
            dropped.append(logged)
        }
        for (origin, sequence) in common where sequence > floor[origin] ?? 0 {
            // The chain at the new floor, for nodes that take this state later (the operation
            // there is still held: the floor never passes the vector).
            if let hash = operationChain(origin, sequence, dropped: dropped) { floorChains[origin] = hash }
            floor[origin] = sequence
        }
        settledMoves += dropped.count
        lastSettled = settlement.moves.last?.timestamp
        assert(floorWithinVector, "a floor passed the vector after settle")
        return (settlement, dropped)
    }
}
