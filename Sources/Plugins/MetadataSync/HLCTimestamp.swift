import BlockExchange

/// An operation's timestamp K = (HLC wall-clock ms, HLC counter, node ID), compared in that
/// order: a total order that respects causality (Hybrid Logical Clocks, Kulkarni et al. 2014).
/// Ties between nodes are broken by the node ID's bytes, so every replica orders every pair
/// of operations the same way.
public struct HLCTimestamp: Comparable, Hashable, Sendable, CustomStringConvertible {
    public let wall: UInt64
    public let counter: UInt32
    public let node: NodeID

    public init(wall: UInt64, counter: UInt32, node: NodeID) {
        self.wall = wall
        self.counter = counter
        self.node = node
    }

    public static func < (a: HLCTimestamp, b: HLCTimestamp) -> Bool {
        if a.wall != b.wall { return a.wall < b.wall }
        if a.counter != b.counter { return a.counter < b.counter }
        return a.node.bytes.lexicographicallyPrecedes(b.node.bytes)
    }

    public var description: String { "\(wall).\(counter)@\(node.description.prefix(9))" }
}

/// The local hybrid logical clock: never goes backwards, and moves past every timestamp it
/// has seen, so an operation made after receiving another is stamped after it. The caller
/// persists `last` (a restarted node must not reuse a timestamp).
public struct HybridLogicalClock: Sendable {
    public let node: NodeID
    public private(set) var wall: UInt64
    public private(set) var counter: UInt32

    public init(node: NodeID, wall: UInt64 = 0, counter: UInt32 = 0) {
        self.node = node
        self.wall = wall
        self.counter = counter
    }

    /// A timestamp for a local operation at physical time `now` (ms). A counter at its limit
    /// (a peer's stamp can carry any counter) moves the logical time on a millisecond instead
    /// of overflowing: the order is kept, nothing traps.
    public mutating func tick(now: UInt64) -> HLCTimestamp {
        if now > wall {
            wall = now
            counter = 0
        } else if counter == .max {
            wall += 1
            counter = 0
        } else {
            counter += 1
        }
        return HLCTimestamp(wall: wall, counter: counter, node: node)
    }

    /// Takes in a remote timestamp (already checked against the skew limit, and its wall
    /// against `OperationCodec.maxWall`).
    public mutating func observe(_ remote: HLCTimestamp) {
        if remote.wall > wall {
            wall = remote.wall
            counter = remote.counter
        } else if remote.wall == wall {
            counter = max(counter, remote.counter)
        }
    }

    /// Whether a remote timestamp is further ahead of `now` than `maxSkew` (ms): such an
    /// operation is held back and reported, not applied (it would drag every clock forward).
    public static func isTooFarAhead(_ timestamp: HLCTimestamp, now: UInt64, maxSkew: UInt64) -> Bool {
        timestamp.wall > (now > .max - maxSkew ? .max : now + maxSkew)
    }
}
