import BlockExchange
import HarpKernel

/// The metadata sync's frames inside the p2p sessions (delta anti-entropy): on connect, and
/// again every `rescan_interval`, each side sends its report — its vector (per origin node,
/// the highest operation sequence it holds durably without gaps) with the other replicas'
/// vectors it knows (ReplicaReports) — and the other answers with what is missing; every new
/// operation is pushed to every peer at once. Batches are deflated. The reports tell each
/// node what every replica holds, which it needs to drop moves below the causally stable
/// point (Replica.settle).
struct SyncChannel: PeerChannel {
    static let report: UInt8 = 64
    static let operations: UInt8 = 65
    /// A node's settled state, in parts, for a peer that joined after moves were dropped.
    static let settled: UInt8 = 66
    /// Items per settled-state part (about 60 bytes each before deflating).
    static let settledPartSize = 20_000
    /// A batch holds at most this many operations (a node 10,000 operations behind gets five).
    static let batchSize = 2000

    let node: MetadataNode

    var channelTypes: [UInt8: Int] { [Self.report: 4 << 20, Self.operations: 4 << 20, Self.settled: 4 << 20] }

    func peerConnected(_ link: PeerLink) {
        Task { await node.connected(link) }
    }

    func received(type: UInt8, body: [UInt8], from peer: NodeID) {
        Task { await node.received(type: type, body: body, from: peer) }
    }

    func peerDisconnected(_ link: PeerLink) {
        Task { await node.disconnected(link) }
    }

    /// One part of a settled state, as `encodeSettled` makes them.
    struct SettledPart {
        var index: Int
        var total: Int
        var clock: (wall: UInt64, counter: UInt32)
        var settled: Replica.Settled
        /// Operations the sender keeps at or below its floor (versions, moves not settled):
        /// the floor says the receiver holds them, so they come with the state.
        var operations: [LoggedOperation]
    }

    /// The state and operations of a complete set of parts (any order).
    static func assemble(_ parts: some Collection<SettledPart>) -> (settled: Replica.Settled, operations: [LoggedOperation]) {
        var settled = Replica.Settled()
        settled.floor = parts.first?.settled.floor ?? [:]
        for part in parts {
            settled.placements.merge(part.settled.placements) { $1 }
            settled.deletions.merge(part.settled.deletions) { $1 }
        }
        return (settled, parts.flatMap(\.operations))
    }

    /// The settled state in parts: flag byte (1 = deflated), then index u32 · total u32 ·
    /// wall u64 · counter u32 · floor count u16 · (origin [32] · sequence u64)… · item count
    /// u32 · (item [16] · placement length u16 · placement · deletion length u16 · deletion)…
    /// · operations length u32 · operations (OperationCodec). Every part carries the floor and
    /// the clock; the receiver takes the state once it has every part.
    static func encodeSettled(_ settled: Replica.Settled, operations: [LoggedOperation], clock: HybridLogicalClock) -> [[UInt8]] {
        let items = settled.placements.sorted { $0.key.bytes.lexicographicallyPrecedes($1.key.bytes) }
        let parts = max(1, (items.count + settledPartSize - 1) / settledPartSize, (operations.count + settledPartSize - 1) / settledPartSize)
        func slice<T>(_ all: [T], _ part: Int) -> ArraySlice<T> {
            all[min(all.count, part * settledPartSize)..<min(all.count, (part + 1) * settledPartSize)]
        }
        return (0..<parts).map { part in
            var out: [UInt8] = []
            OperationCodec.append(UInt64(part), bytes: 4, to: &out)
            OperationCodec.append(UInt64(parts), bytes: 4, to: &out)
            OperationCodec.append(clock.wall, to: &out)
            OperationCodec.append(UInt64(clock.counter), bytes: 4, to: &out)
            OperationCodec.append(UInt64(settled.floor.count), bytes: 2, to: &out)
            for (origin, sequence) in settled.floor {
                out += origin.bytes
                OperationCodec.append(sequence, to: &out)
            }
            let itemSlice = slice(items, part)
            OperationCodec.append(UInt64(itemSlice.count), bytes: 4, to: &out)
            for (item, placement) in itemSlice {
                out += item.bytes
                var encoded: [UInt8] = []
                OperationCodec.encode(placement, into: &encoded)
                OperationCodec.append(UInt64(encoded.count), bytes: 2, to: &out)
                out += encoded
                let deletion = settled.deletions[item].map(OperationCodec.encode) ?? []
                OperationCodec.append(UInt64(deletion.count), bytes: 2, to: &out)
                out += deletion
            }
            let encoded = OperationCodec.encode(Array(slice(operations, part)))
            OperationCodec.append(UInt64(encoded.count), bytes: 4, to: &out)
            out += encoded
            if let deflated = Deflate.compressIfSmaller(out) { return [1] + deflated }
            return [0] + out
        }
    }

    /// nil unless `body` is exactly one part (inflating to 16 MiB at most).
    static func decodeSettled(_ body: [UInt8]) -> SettledPart? {
        guard let flag = body.first else { return nil }
        var bytes = Array(body.dropFirst())
        if flag == 1 {
            guard let inflated = bytes.withUnsafeBytes({ Deflate.decompress($0, limit: 16 << 20) }) else { return nil }
            bytes = inflated
        }
        var reader = ByteReader(bytes: bytes)
        guard let index = reader.integer(4), let total = reader.integer(4), index < total, total <= 1 << 16,
              let wall = reader.integer(8), let counter = reader.integer(4), let floors = reader.integer(2) else { return nil }
        var settled = Replica.Settled()
        for _ in 0..<floors {
            guard let origin = reader.node(), let sequence = reader.integer(8) else { return nil }
            settled.floor[origin] = sequence
        }
        guard let count = reader.integer(4), count <= UInt64(settledPartSize) else { return nil }
        for _ in 0..<count {
            guard let item = reader.item(), let length = reader.integer(2), let encoded = reader.take(Int(length)),
                  let placement = OperationCodec.decodePlacement(encoded), let deletionLength = reader.integer(2),
                  let deletionBytes = reader.take(Int(deletionLength)) else { return nil }
            settled.placements[item] = placement
            if deletionLength > 0 {
                guard let deletion = OperationCodec.decodeDeletion(deletionBytes) else { return nil }
                settled.deletions[item] = deletion
            }
        }
        guard let operationsLength = reader.integer(4), let operationBytes = reader.take(Int(operationsLength)),
              let operations = OperationCodec.decode(operationBytes), reader.atEnd else { return nil }
        return SettledPart(index: Int(index), total: Int(total), clock: (wall, UInt32(counter)), settled: settled, operations: operations)
    }

    /// A batch as sent: flag byte (1 = deflated) and the encoded operations.
    static func encodeBatch(_ batch: [LoggedOperation]) -> [UInt8] {
        let encoded = OperationCodec.encode(batch)
        if let deflated = Deflate.compressIfSmaller(encoded) { return [1] + deflated }
        return [0] + encoded
    }

    /// nil for a batch that does not inflate (within 16 MiB) or decode.
    static func decodeBatch(_ body: [UInt8]) -> [LoggedOperation]? {
        guard let flag = body.first else { return nil }
        var encoded = Array(body.dropFirst())
        if flag == 1 {
            guard let inflated = encoded.withUnsafeBytes({ Deflate.decompress($0, limit: 16 << 20) }) else { return nil }
            encoded = inflated
        }
        return OperationCodec.decode(encoded)
    }
}
