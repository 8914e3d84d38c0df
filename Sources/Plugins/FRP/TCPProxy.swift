import CoreMetrics
import Glibc
import HarpKernel
import Logging

/// A `tcp` proxy of one client: a listener on `proxy_bind:port` whose every connection is
/// paired with one of the client's work connections (StartWorkConn first, then bytes both
/// ways). A plain work connection without tcpMux is a socket, so the relay splices; TLS,
/// yamux and `use_encryption` legs are copied.
///
/// Loop-confined (the server's loop).
final class TCPProxy: @unchecked Sendable {
    // @unchecked Sendable: loop-confined; its listener serves connections on the same loop.
    /// Strong: a user connection waiting for a work connection may outlive the control's
    /// registration (the control drops its proxies when it ends, so there is no cycle left).
    let control: ClientControl
    let name: String
    let port: Int
    let useEncryption: Bool
    let useCompression: Bool
    private var listeners: ListenerSet?
    private var address: SocketAddress?

    /// An idle tunnel is closed after this (HaRP's tunnel timeout).
    static let idleTimeout: Duration = .seconds(1800)

    init(control: ClientControl, name: String, port: Int, useEncryption: Bool, useCompression: Bool) {
        self.control = control
        self.name = name
        self.port = port
        self.useEncryption = useEncryption
        self.useCompression = useCompression
    }

    func listen(on address: SocketAddress) throws {
        let set = ListenerSet(loops: [control.loop], logger: control.logger)
        try set.listen(on: address) { [weak self] user in
            guard let self else { return user.abort() }
            await self.serve(user)
        }
        listeners = set
        self.address = address
    }

    func stop() async {
        await listeners?.stop()
        listeners = nil
    }

    private func serve(_ user: SocketStream) async {
        control.loop.assertInLoop()
        Socket.setNoDelay(user.fd)
        let metrics = control.server.metrics
        guard let work = await control.takeWorkConnection() else {
            control.logger.warning("frp: no work connection for a user connection", metadata: ["proxy": "\(name)"])
            user.abort()
            return
        }
        metrics.workConnectionsInUse.increment()
        defer { metrics.workConnectionsInUse.decrement() }
        let source = user.peer
        let start = FRPMessage.startWorkConnection(.init(
            proxyName: name, sourceAddress: source?.hostText ?? "", destinationAddress: address?.hostText ?? "",
            sourcePort: Int(source?.port ?? 0), destinationPort: port, error: ""))
        guard await work.write(start.encoded(), timeout: .seconds(10)) == 0 else {
            user.abort()
            work.abort()
            return
        }
        // frp's layers: user bytes → snappy (use_compression) → AES-CFB (use_encryption) → wire.
        var tunnel: any ByteStream = work
        if useEncryption { tunnel = CipherStream(tunnel, key: control.server.cipherKey) }
        if useCompression { tunnel = SnappyStream(tunnel) }
        // Counted as they move: the gateway keeps work connections alive for hours.
        let (toClient, toUser) = (metrics.bytesToClient, metrics.bytesToUser)
        _ = await user.loop.relay(user, tunnel, idleTimeout: Self.idleTimeout) { side, bytes in
            (side == 0 ? toClient : toUser).increment(by: bytes)
        }
        await user.close()
        await tunnel.close()
    }
}
