import CoreMetrics
import Glibc
import HarpKernel
import Logging
import Synchronization

/// The node's connections to its peers: mutually authenticated TLS 1.3 where each side is
/// known by its key (node ID), not by a CA. A connection is admitted only when the peer's ID
/// is in `[storage] peers` — checked right after the handshake, before any frame — and then
/// both sides send a Hello. Of two configured peers, the one with the smaller ID dials (so
/// each pair has one connection); the other listens. Dialing retries with back-off.
final class PeerNetwork: Sendable {
    let node: NodeID
    let configuration: StorageConfiguration
    let logger: Logger
    let swarm: Swarm
    private let server: TLSContext
    private let client: TLSContext
    private let allowed: [NodeID: SocketAddress]
    /// Live connections by peer (a count: during a restart an old and a new connection to one
    /// peer may overlap), and every stream and back-off timer, so that `stop` can end them.
    private let connected = Mutex<[NodeID: Int]>([:])
    private let streams = Mutex<[ObjectIdentifier: TLSStream]>([:])
    private let sleepers = Mutex<[ObjectIdentifier: (loop: EventLoop, timer: AsyncCompletion)]>([:])
    private let stopping = Atomic<Bool>(false)
    private let peersGauge = Meter(label: "harp_p2p_peers_connected")
    static let alpn = ["harp-p2p/1"]
    static let handshakeTimeout: Duration = .seconds(10)

    init(node: NodeID, configuration: StorageConfiguration, swarm: Swarm, logger: Logger) throws(TLSError) {
        self.node = node
        self.swarm = swarm
        self.configuration = configuration
        self.logger = logger
        let certificate = configuration.dir + "/" + NodeIdentity.certificateFile, key = configuration.dir + "/" + NodeIdentity.keyFile
        server = try TLSContext.pinnedPeers(certificate: certificate, key: key, isServer: true, alpn: Self.alpn)
        client = try TLSContext.pinnedPeers(certificate: certificate, key: key, isServer: false, alpn: Self.alpn)
        allowed = Dictionary(configuration.peers.map { ($0.id, $0.address) }, uniquingKeysWith: { first, _ in first })
    }

    var connectedPeers: Set<NodeID> { connected.withLock { Set($0.keys) } }

    /// An accepted connection: handshake, admission, Hello, then held until it ends.
    func accept(_ socket: SocketStream) async {
        let peer = socket.peer.map { "\($0)" } ?? "?"
        let stream: TLSStream
        do {
            stream = try TLSStream(transport: socket, context: server, isServer: true)
            try await stream.handshake(timeout: Self.handshakeTimeout)
        } catch {
            logger.info("p2p handshake failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
            socket.abort()
            return
        }
        guard let key = stream.peerPublicKey else { return stream.abort() }
        let id = NodeID(publicKey: key)
        guard allowed[id] != nil else {
            logger.warning("refused peer \(id): not in [storage] peers", metadata: ["address": "\(peer)"])
            return stream.abort()
        }
        await run(stream, peer: id)
    }

    /// Keeps a connection to `peer` while the node runs (only toward peers with larger IDs).
    func maintain(_ peer: StorageConfiguration.Peer, on loop: EventLoop) async {
        let dialer = Dialer(connectTimeout: Self.handshakeTimeout)
        let timer = AsyncCompletion()
        sleepers.withLock { $0[ObjectIdentifier(timer)] = (loop, timer) }
        defer { sleepers.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(timer)) } }
        var backoff: Duration = .milliseconds(250)
        while !stopping.load(ordering: .relaxed) {
            do {
                let stream = try await dialer.dial(peer.address, on: loop, tls: client)
                let tls = stream as? TLSStream
                let id = tls?.peerPublicKey.map { NodeID(publicKey: $0) }
                if let tls, let id, id == peer.id {
                    backoff = .milliseconds(250)
                    await run(tls, peer: id)
                } else {
                    // No key, or another node's: never a tight loop — the back-off below.
                    logger.warning("the node at \(peer.address) is \(id.map { "\($0)" } ?? "without a key"), not the configured \(peer.id): not connecting")
                    stream.abort()
                }
            } catch {
                logger.debug("p2p peer not reachable", metadata: ["peer": "\(peer.id)", "error": "\(error)"])
            }
            if stopping.load(ordering: .relaxed) { break }
            _ = await loop.sleep(for: backoff, using: timer)
            backoff = min(backoff * 2, .seconds(30))
        }
    }

    /// Hello both ways, then the block exchange (`PeerSession`) until the peer goes or the
    /// node stops.
    private func run(_ stream: TLSStream, peer id: NodeID) async {
        // Room for the largest metadata frame; the buffer grows only as far as frames need.
        let reader = FramedReader(stream: stream, capacity: PeerFrameHeader.size + PeerFrameType.manifest.maximumBody)
        guard await stream.write(PeerFrameHeader.encode(.hello, body: PeerHello().body), timeout: Self.handshakeTimeout) == 0 else {
            return stream.abort()
        }
        var decoder = PeerFrameDecoder()
        switch await reader.next(&decoder, timeout: Self.handshakeTimeout) {
        case .frame(let header, let headerLength, let payloadLength) where header.type == .hello:
            while reader.buffer.count < headerLength + payloadLength {
                guard await reader.fill(timeout: Self.handshakeTimeout) > 0 else { return stream.abort() }
            }
            let hello = PeerHello(body: UnsafeRawBufferPointer(rebasing: reader.buffer.readable[headerLength..<headerLength + payloadLength]))
            reader.buffer.consume(headerLength + payloadLength)
            guard let hello, hello.version == PeerHello.currentVersion else {
                logger.warning("peer \(id) speaks another protocol version",
                               metadata: ["theirs": "\(hello.map { "\($0.version)" } ?? "none")", "ours": "\(PeerHello.currentVersion)"])
                return stream.abort()
            }
        case .invalid(let reason):
            logger.warning("peer \(id) broke the protocol: \(reason)")
            return stream.abort()
        default:
            logger.info("peer \(id) sent no Hello")
            return stream.abort()
        }
        let key = ObjectIdentifier(stream)
        streams.withLock { $0[key] = stream }
        if stopping.load(ordering: .relaxed) { stream.abort() }  // `stop` may have run meanwhile
        let first = connected.withLock { connected -> Bool in
            connected[id, default: 0] += 1
            return connected[id] == 1
        }
        if first { peersGauge.increment() }
        logger.info("peer connected \(id)")
        await PeerSession(peer: id, stream: stream, reader: reader, swarm: swarm).run()
        streams.withLock { _ = $0.removeValue(forKey: key) }
        let last = connected.withLock { connected -> Bool in
            connected[id, default: 1] -= 1
            if connected[id] == 0 { connected[id] = nil }
            return connected[id] == nil
        }
        if last { peersGauge.decrement() }
        logger.info("peer disconnected \(id)")
        stream.abort()
    }

    /// Ends every peer connection and back-off wait, each on its own loop, so that shutdown
    /// does not wait out its grace period for connections that never end by themselves.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        for stream in streams.withLock({ Array($0.values) }) {
            stream.loop.spawn { stream.abort() }
        }
        for (loop, timer) in sleepers.withLock({ Array($0.values) }) {
            loop.spawn { if timer.isPending { loop.cancel(timer) } }
        }
    }
}
