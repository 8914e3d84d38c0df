import CoreMetrics
import Glibc
import HarpKernel
import Logging
import Synchronization

/// The node's connections to its peers: mutually authenticated TLS 1.3 where each side is
/// known by its key (node ID), not by a CA. A connection is admitted only when the peer's ID
/// is in `[storage] peers` — checked right after the handshake, before any frame — and then
/// both sides send a Hello. Both sides dial a configured peer they are not connected to
/// (with back-off), so a node that starts is connected at once to every peer that runs,
/// whoever's back-off was long; when two connections meet, both sides keep the one the
/// smaller ID dialed and close the other.
final class PeerNetwork: Sendable {
    let node: NodeID
    let configuration: StorageConfiguration
    let logger: Logger
    let swarm: Swarm
    private let server: TLSContext
    private let client: TLSContext
    private let allowed: Set<NodeID>
    /// Live connections by peer, each with whether we dialed it: during a restart or a
    /// simultaneous dial, an old and a new connection to one peer may overlap for a moment.
    private let links = Mutex<[NodeID: [ObjectIdentifier: (stream: TLSStream, outbound: Bool)]]>([:])
    /// Peers reported connected (log line, gauge). A peer is reported gone only when it had no
    /// connection for `reconnectGrace`: when both sides dial at once, one side may close the
    /// connection the other kept before the one that replaces it arrives (a few ms), which is
    /// not a disconnect worth a log line.
    private let reported = Mutex<Set<NodeID>>([])
    static let reconnectGrace: Duration = .milliseconds(500)
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
        // Chunks are bulk: AES-128-GCM, as the frp tunnels use (OpenSSL's default is AES-256).
        server.preferAES128()
        client.preferAES128()
        allowed = Set(configuration.peers.map(\.id))
    }

    var connectedPeers: Set<NodeID> { links.withLock { Set($0.keys) } }

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
        guard allowed.contains(id) else {
            logger.warning("refused peer \(id): not in [storage] peers", metadata: ["address": "\(peer)"])
            return stream.abort()
        }
        if let remaining = swarm.penalties.remaining(id) {
            logger.info("refused peer \(id): penalized for \(remaining) more")
            return stream.abort()
        }
        await run(stream, peer: id, outbound: false)
    }

    /// Keeps a connection to `peer` while the node runs: dials while there is none. The
    /// larger ID waits a moment first, so that two nodes starting together usually make one
    /// connection, not two.
    func maintain(_ peer: StorageConfiguration.Peer, on loop: EventLoop) async {
        let dialer = Dialer(connectTimeout: Self.handshakeTimeout)
        let timer = AsyncCompletion()
        sleepers.withLock { $0[ObjectIdentifier(timer)] = (loop, timer) }
        defer { sleepers.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(timer)) } }
        var backoff: Duration = .milliseconds(250)
        if peer.id.bytes.lexicographicallyPrecedes(node.bytes) { _ = await loop.sleep(for: .milliseconds(200), using: timer) }
        while !stopping.load(ordering: .relaxed) {
            if connectedPeers.contains(peer.id) {
                backoff = .milliseconds(250)
                _ = await loop.sleep(for: .seconds(1), using: timer)
                continue
            }
            if let remaining = swarm.penalties.remaining(peer.id) {
                _ = await loop.sleep(for: min(remaining, .seconds(30)), using: timer)
                continue
            }
            do {
                let stream = try await dialer.dial(try await peer.address.resolved(), on: loop, tls: client)
                let tls = stream as? TLSStream
                let id = tls?.peerPublicKey.map { NodeID(publicKey: $0) }
                if let tls, let id, id == peer.id {
                    // A peer that refuses this node (not in its list) closes right after the
                    // handshake: only a session that got past the Hellos resets the back-off.
                    if await run(tls, peer: id, outbound: true) { backoff = .milliseconds(250) }
                } else {
                    // No key, or another node's: never a tight loop — the back-off below.
                    logger.warning("the node at \(peer.address) is \(id.map { "\($0)" } ?? "without a key"), not the configured \(peer.id): not connecting")
                    stream.abort()
                }
            } catch {
                logger.debug("p2p peer not reachable", metadata: ["peer": "\(peer.id)", "error": "\(error)"])
            }
            if stopping.load(ordering: .relaxed) { break }
            // ±20% jitter: nodes refused together do not retry in step.
            _ = await loop.sleep(for: backoff * Double.random(in: 0.8...1.2), using: timer)
            backoff = min(backoff * 2, .seconds(30))
        }
    }

    /// Hello both ways, then the block exchange (`PeerSession`) until the peer goes or the
    /// node stops. Returns whether the Hellos were exchanged (a session ran).
    @discardableResult
    private func run(_ stream: TLSStream, peer id: NodeID, outbound: Bool) async -> Bool {
        // Room for the largest metadata frame; the buffer grows only as far as frames need.
        let reader = FramedReader(stream: stream, capacity: PeerFrameHeader.size + PeerFrameType.manifest.maximumBody)
        guard await stream.write(PeerMessage.hello(PeerHello()).frame, timeout: Self.handshakeTimeout) == 0 else {
            stream.abort()
            return false
        }
        var decoder = PeerFrameDecoder()
        // The whole Hello within the limit, however slowly it trickles in.
        switch await reader.nextWhole(&decoder, timeout: Self.handshakeTimeout, until: stream.loop.now + Self.handshakeTimeout.nanoseconds) {
        case .frame(let header, let headerLength, let payloadLength) where header.type == .hello:
            let message = try? PeerMessage(type: .hello, body: Array(reader.buffer.readable[headerLength..<headerLength + payloadLength]))
            reader.buffer.consume(headerLength + payloadLength)
            guard case .hello(let hello) = message, hello.version == PeerHello.currentVersion else {
                let theirs = if case .hello(let hello) = message { "\(hello.version)" } else { "none" }
                logger.warning("peer \(id) speaks another protocol version", metadata: ["theirs": "\(theirs)", "ours": "\(PeerHello.currentVersion)"])
                stream.abort()
                return false
            }
        case .invalid(let reason):
            logger.warning("peer \(id) broke the protocol: \(reason)")
            stream.abort()
            return false
        case .ended(0) where outbound:
            logger.warning("peer \(id) closed the connection before its Hello: it does not list this node (\(node)) in its [storage] peers, or it penalized it")
            stream.abort()
            return false
        default:
            logger.info("peer \(id) sent no Hello within \(Self.handshakeTimeout)")
            stream.abort()
            return false
        }
        // Of two connections to one peer, both sides keep the one the smaller ID dialed.
        let key = ObjectIdentifier(stream)
        let dialedBySmaller = outbound == node.bytes.lexicographicallyPrecedes(id.bytes)
        let (admitted, displaced) = links.withLock { links -> (Bool, TLSStream?) in
            let existing = links[id] ?? [:]
            if let (otherKey, other) = existing.first(where: { _ in true }) {
                let otherDialedBySmaller = other.outbound == node.bytes.lexicographicallyPrecedes(id.bytes)
                guard dialedBySmaller, !otherDialedBySmaller else { return (false, nil) }
                links[id]![otherKey] = nil
                links[id]![key] = (stream, outbound)
                return (true, other.stream)
            }
            links[id] = [key: (stream, outbound)]
            return (true, nil)
        }
        guard admitted else {
            logger.debug("a second connection to peer \(id): closed (one is enough)")
            stream.abort()
            return true
        }
        if let displaced { displaced.loop.spawn { displaced.abort() } }
        if stopping.load(ordering: .relaxed) { stream.abort() }  // `stop` may have run meanwhile
        if reported.withLock({ $0.insert(id).inserted }) {
            peersGauge.increment()
            logger.info("peer connected \(id)")
        }
        await PeerSession(peer: id, stream: stream, reader: reader, swarm: swarm).run()
        let last = links.withLock { links -> Bool in
            guard links[id]?[key] != nil else { return false }  // displaced: the new one goes on
            links[id]![key] = nil
            if links[id]!.isEmpty { links[id] = nil }
            return links[id] == nil
        }
        stream.abort()
        if last {
            let timer = AsyncCompletion()
            if !stopping.load(ordering: .relaxed) { _ = await stream.loop.sleep(for: Self.reconnectGrace, using: timer) }
            let gone = links.withLock { $0[id] == nil } && reported.withLock { $0.remove(id) != nil }
            if gone {
                peersGauge.decrement()
                logger.info("peer disconnected \(id)")
            }
        }
        return true
    }

    /// Ends every peer connection and back-off wait, each on its own loop, so that shutdown
    /// does not wait out its grace period for connections that never end by themselves.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        for stream in links.withLock({ $0.values.flatMap { $0.values.map(\.stream) } }) {
            stream.loop.spawn { stream.abort() }
        }
        for (loop, timer) in sleepers.withLock({ Array($0.values) }) {
            loop.spawn { if timer.isPending { loop.cancel(timer) } }
        }
    }
}
