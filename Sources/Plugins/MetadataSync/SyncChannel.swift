import BlockExchange
import HarpKernel

/// The metadata sync's frames inside the p2p sessions (delta anti-entropy): on connect each
/// side sends its vector — per origin node, the highest operation sequence it holds without
/// gaps — and the other answers with what is missing; afterwards every new operation is
/// pushed to every peer at once. Batches are deflated.
struct SyncChannel: PeerChannel {
    static let vector: UInt8 = 64
    static let operations: UInt8 = 65
    /// A batch holds at most this many operations (a node 10,000 operations behind gets five).
    static let batchSize = 2000

    let node: MetadataNode

    var channelTypes: [UInt8: Int] { [Self.vector: 40 * 4096, Self.operations: 4 << 20] }

    func peerConnected(_ link: PeerLink) {
        Task { await node.connected(link) }
    }

    func received(type: UInt8, body: [UInt8], from peer: NodeID) {
        Task { await node.received(type: type, body: body, from: peer) }
    }

    func peerDisconnected(_ peer: NodeID) {
        Task { await node.disconnected(peer) }
    }

    static func encodeVector(_ vector: [NodeID: UInt64]) -> [UInt8] {
        var out: [UInt8] = []
        for (origin, sequence) in vector.sorted(by: { $0.key.bytes.lexicographicallyPrecedes($1.key.bytes) }) {
            out += origin.bytes
            OperationCodec.append(sequence, to: &out)
        }
        return out
    }

    static func decodeVector(_ body: [UInt8]) -> [NodeID: UInt64]? {
        guard body.count % 40 == 0 else { return nil }
        var vector: [NodeID: UInt64] = [:]
        for start in stride(from: 0, to: body.count, by: 40) {
            vector[NodeID(bytes: Array(body[start..<start + 32]))] = body[start + 32..<start + 40].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        }
        return vector
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
