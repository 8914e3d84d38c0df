import BlockExchange
import HarpKernel

/// What a node knows of every replica of the folder, for settling (Replica.settle): which
/// nodes hold a replica, and the latest vector each has reported, first-hand or relayed.
///
/// Peers need not all know each other: in a chain A – B – C, A never talks to C, yet A must
/// not settle a move C has not seen. So every report frame carries the sender's whole table —
/// the replica set it knows (its configured peers plus every set reported to it) and every
/// vector it holds — and the receiver merges it. A node settles only once it has a vector from
/// every replica it knows of; a vector arriving with a set always brings that set along, so
/// a replica behind a relay is known before its relay's report can count.
///
/// Vectors only grow, so merging two reports of one node keeps the larger entry per origin
/// (that is the later report); an old report only settles less.
public struct ReplicaReports: Sendable, Equatable {
    public let node: NodeID
    public private(set) var replicas: Set<NodeID>
    /// Per replica other than this node, the latest vector known.
    public private(set) var vectors: [NodeID: [NodeID: UInt64]] = [:]

    /// At most this many replicas are known (and nodes in a decoded set, vectors, entries per
    /// vector): a table is about N² × 40 bytes and must fit a 4 MiB frame. A peer is trusted
    /// with what it relays (it is configured and authenticated); this only bounds a bad one.
    static let maxNodes = 256

    public init(node: NodeID, peers: some Sequence<NodeID>) {
        self.node = node
        replicas = Set(peers).union([node])
    }

    /// Folds in a peer's table.
    public mutating func merge(_ table: Table) {
        for replica in table.replicas.union(table.vectors.keys) where replicas.count < Self.maxNodes { replicas.insert(replica) }
        for (replica, vector) in table.vectors where replica != node && replicas.contains(replica) {
            vectors[replica, default: [:]].merge(vector) { max($0, $1) }
        }
    }

    /// A report frame's content: the sender's replica set and the vectors it knows (its own
    /// among them).
    public struct Table: Sendable, Equatable {
        public var replicas: Set<NodeID>
        public var vectors: [NodeID: [NodeID: UInt64]]

        public init(replicas: Set<NodeID>, vectors: [NodeID: [NodeID: UInt64]]) {
            self.replicas = replicas
            self.vectors = vectors
        }
    }

    /// This node's table, with `own` as its vector (the durable one: peers drop moves on the
    /// strength of it).
    public func table(own: [NodeID: UInt64]) -> Table {
        var all = vectors
        all[node] = own
        return Table(replicas: replicas, vectors: all)
    }

    // MARK: Wire form

    /// count u16 · node [32]…, then count u16 · (node [32] · entries u16 · (origin [32] ·
    /// sequence u64)…)… — nodes and origins sorted, so one table always encodes alike.
    public static func encode(_ table: Table) -> [UInt8] {
        func sorted(_ nodes: some Sequence<NodeID>) -> [NodeID] { nodes.sorted { $0.bytes.lexicographicallyPrecedes($1.bytes) } }
        var writer = ByteWriter()
        writer.u16(UInt16(table.replicas.count))
        for replica in sorted(table.replicas) { writer.raw(replica.bytes) }
        writer.u16(UInt16(table.vectors.count))
        for replica in sorted(table.vectors.keys) {
            let vector = table.vectors[replica]!
            writer.raw(replica.bytes)
            writer.u16(UInt16(vector.count))
            for origin in sorted(vector.keys) {
                writer.raw(origin.bytes)
                writer.u64(vector[origin]!)
            }
        }
        return writer.bytes
    }

    /// One table within the limits, or why not.
    static func decode(_ body: [UInt8]) throws(SyncRefusal) -> Table {
        var reader = ByteReader(body)
        return try SyncRefusal.decoding {
            let replicaCount = try reader.u16()
            guard replicaCount <= maxNodes else { throw SyncRefusal.malformed("a report of \(replicaCount) replicas (at most \(maxNodes))") }
            var replicas: Set<NodeID> = []
            for _ in 0..<replicaCount { replicas.insert(try reader.node()) }
            let vectorCount = try reader.u16()
            guard vectorCount <= maxNodes else { throw SyncRefusal.malformed("a report of \(vectorCount) vectors") }
            var vectors: [NodeID: [NodeID: UInt64]] = [:]
            for _ in 0..<vectorCount {
                let replica = try reader.node(), entries = try reader.u16()
                guard entries <= maxNodes else { throw SyncRefusal.malformed("a vector of \(entries) entries") }
                var vector: [NodeID: UInt64] = [:]
                for _ in 0..<entries {
                    let origin = try reader.node(), sequence = try reader.u64()
                    guard sequence <= OperationCodec.maxSequence else { throw SyncRefusal.malformed("sequence \(sequence) in a vector") }
                    vector[origin] = sequence
                }
                vectors[replica] = vector
            }
            guard reader.atEnd else { throw SyncRefusal.malformed("bytes after a report") }
            return Table(replicas: replicas, vectors: vectors)
        }
    }
}
