import CoreMetrics
import HarpKernel
import Synchronization

/// What each peer has moved, kept across its reconnections: for `harp storage status` and
/// the metrics (bytes and chunks each way per peer, bad chunks).
final class PeerStatistics: Sendable {
    struct Peer: Sendable {
        var bytesSent = 0
        var bytesReceived = 0
        var chunksSent = 0
        var chunksReceived = 0
        var badChunks = 0
        var sending = RateMeter()
        var receivingRate = RateMeter()
    }

    private let peers = Mutex<[NodeID: Peer]>([:])
    private let meters = Mutex<[NodeID: (sent: Counter, received: Counter, chunksSent: Counter, chunksReceived: Counter, bad: Counter)]>([:])

    private func counters(_ peer: NodeID) -> (sent: Counter, received: Counter, chunksSent: Counter, chunksReceived: Counter, bad: Counter) {
        meters.withLock { meters in
            if let existing = meters[peer] { return existing }
            let dimensions = [("peer", "\(peer)")]
            let made = (Counter(label: "harp_p2p_sent_bytes_total", dimensions: dimensions),
                        Counter(label: "harp_p2p_received_bytes_total", dimensions: dimensions),
                        Counter(label: "harp_p2p_sent_chunks_total", dimensions: dimensions),
                        Counter(label: "harp_p2p_received_chunks_total", dimensions: dimensions),
                        Counter(label: "harp_p2p_bad_chunks_total", dimensions: dimensions))
            meters[peer] = made
            return made
        }
    }

    func sent(_ bytes: Int, to peer: NodeID) {
        peers.withLock {
            $0[peer, default: Peer()].bytesSent += bytes
            $0[peer]!.chunksSent += 1
            $0[peer]!.sending.add(bytes)
        }
        let counters = counters(peer)
        counters.sent.increment(by: bytes)
        counters.chunksSent.increment()
    }

    func received(_ bytes: Int, from peer: NodeID) {
        peers.withLock {
            $0[peer, default: Peer()].bytesReceived += bytes
            $0[peer]!.chunksReceived += 1
            $0[peer]!.receivingRate.add(bytes)
        }
        let counters = counters(peer)
        counters.received.increment(by: bytes)
        counters.chunksReceived.increment()
    }

    func badChunk(from peer: NodeID) {
        peers.withLock { $0[peer, default: Peer()].badChunks += 1 }
        counters(peer).bad.increment()
    }

    func snapshot() -> [NodeID: Peer] { peers.withLock { $0 } }
}
