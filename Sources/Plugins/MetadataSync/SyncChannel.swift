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
    /// A batch holds at most this many operations (a node 10,000 operations behind gets five).
    static let batchSize = 2000

    let node: MetadataNode

    var channelTypes: [UInt8: Int] { [Self.report: 4 << 20, Self.operations: 4 << 20] }

    func peerConnected(_ link: PeerLink) {
        Task { await node.connected(link) }
    }

    func received(type: UInt8, body: [UInt8], from peer: NodeID) {
        Task { await node.received(type: type, body: body, from: peer) }
    }

    func peerDisconnected(_ peer: NodeID) {
        Task { await node.disconnected(peer) }
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
