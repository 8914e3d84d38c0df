import CoreMetrics
import Glibc
import HarpKernel
import Logging
import Synchronization

/// One logged-in frpc: its encrypted control stream, its proxies and its pool of work
/// connections. Ends when the client goes (the stream ends or breaks the protocol), when the
/// same run id logs in again, or at shutdown; then its proxies' ports are released at once.
///
/// Loop-confined (the server's loop).
final class ClientControl: @unchecked Sendable {
    // @unchecked Sendable: loop-confined; tasks that capture it run on the same loop.
    unowned let server: FRPServer
    let runID: String
    let login: FRPMessage.Login
    let peer: String
    /// The control stream as it came (TLS, a yamux stream or a socket) and, after LoginResp,
    /// the same with frp's encryption on top.
    private let plain: any ByteStream
    private let secure: CipherStream
    private let writer: FrameWriter
    private let leftover: ReadBuffer
    private var proxies: [String: TCPProxy] = [:]
    private var pool: [any ByteStream] = []
    private var poolWaiters: [LoopWait] = []
    private var ended = false

    /// frp caps a client's pool (frps `max_pool_count` default).
    static let maxPoolCount = 5
    /// How long a user connection waits for a work connection (frps: 10 s).
    static let workConnectionTimeout: Duration = .seconds(10)

    init(server: FRPServer, runID: String, login: FRPMessage.Login, stream: any ByteStream, leftover: ReadBuffer, peer: String) {
        self.server = server
        self.runID = runID
        self.login = login
        self.peer = peer
        plain = stream
        secure = CipherStream(stream, key: server.cipherKey)
        writer = FrameWriter(stream: secure)
        self.leftover = leftover
    }

    var loop: EventLoop { plain.loop }
    var logger: Logger { server.logger }

    func run() async {
        loop.assertInLoop()
        let answer = FRPMessage.loginResponse(.init(version: FRPServer.version, runID: runID, error: ""))
        guard await plain.write(answer.encoded(), timeout: .seconds(10)) == 0 else {
            return await end(reason: "could not send LoginResp")
        }
        // frpc waits for LoginResp before it sends anything more: nothing may be buffered.
        guard leftover.isEmpty else { return await end(reason: "bytes after Login before LoginResp") }
        for _ in 0..<min(max(login.poolCount ?? 1, 1), Self.maxPoolCount) {
            guard await send(.requestWorkConnection) else { return await end(reason: "control stream failed") }
        }
        let reader = FramedReader(stream: secure, capacity: 16 * 1024)
        // Without tcpMux frpc sends a Ping every 30 s; `heartbeat_timeout` (90 s: three missed)
        // ends the control. With tcpMux yamux's keep-alive watches the session instead.
        let timeout: Duration? = plain is YamuxStream ? nil : server.configuration.heartbeatTimeout.duration
        while !ended {
            let message: FRPMessage
            do {
                message = try await reader.readMessage(timeout: timeout)
            } catch {
                // A control on a yamux session that ended reads as reset: name the real cause.
                if let stream = plain as? YamuxStream, let why = stream.sessionEndReason {
                    return await end(reason: "yamux session ended: \(why)")
                }
                return await end(reason: "\(error)")
            }
            switch message {
            case .newProxy(let request):
                let response = await open(request)
                guard await send(.newProxyResponse(response)) else { return await end(reason: "control stream failed") }
            case .closeProxy(let request):
                if let name = request.proxyName, let proxy = proxies[name] { await close(proxy) }
            case .ping:
                guard await send(.pong(.init(error: ""))) else { return await end(reason: "control stream failed") }
            default:
                logger.info("frp control: ignoring an unexpected message", metadata: ["peer": "\(peer)", "run_id": "\(runID)"])
            }
        }
    }

    private func send(_ message: FRPMessage) async -> Bool {
        await writer.write(message.encoded(), timeout: .seconds(10)) == 0
    }

    /// Ends the control: proxies stop listening (ports free at once), pooled work connections
    /// and waiting user connections are dropped, the stream closes.
    func end(reason: String) async {
        guard !ended else { return }
        ended = true
        for proxy in proxies.values { await close(proxy) }
        // Logged once the ports are free: a reader of the log (a test, an operator about to
        // restart frpc) may rely on it.
        logger.info("frp client gone", metadata: ["peer": "\(peer)", "run_id": "\(runID)", "reason": "\(reason)"])
        for stream in pool { stream.abort() }
        server.metrics.workConnectionsPooled.decrement(by: Double(pool.count))
        pool.removeAll()
        for waiter in poolWaiters { waiter.signal() }
        poolWaiters.removeAll()
        plain.abort()
    }

    // MARK: Proxies

    private func open(_ request: FRPMessage.NewProxy) async -> FRPMessage.NewProxyResponse {
        // frpc already puts `user.` in front of the name when it has a user; frps (and harp)
        // use the name as sent, and echo it back.
        let name = request.proxyName ?? ""
        func refuse(_ reason: String) -> FRPMessage.NewProxyResponse {
            // The ExApp behind it stays unreachable: a warning, not news.
            logger.warning("frp proxy refused", metadata: ["run_id": "\(runID)", "proxy": "\(name)", "reason": "\(reason)"])
            return .init(proxyName: request.proxyName ?? "", remoteAddress: "", error: reason)
        }
        let configuration = server.configuration
        guard !ended else { return refuse("the client is gone") }
        guard !name.isEmpty else { return refuse("proxy name is empty") }
        let type = request.proxyType.flatMap { $0.isEmpty ? nil : $0 } ?? "tcp"  // frps' default
        guard type == "tcp" else { return refuse("proxy type [\(type)] is not supported by harp (only tcp)") }
        guard server.proxyOwners[name] == nil else { return refuse("proxy [\(name)] already exists") }
        if configuration.maxPortsPerClient > 0 && proxies.count >= configuration.maxPortsPerClient {
            return refuse("exceed the max_ports_per_client")
        }
        var port = request.remotePort ?? 0
        if port == 0 {
            guard let free = configuration.allowPorts.lazy.flatMap({ $0.range }).first(where: { !server.portsInUse.contains($0) }) else {
                return refuse("no available port")
            }
            port = free
        }
        guard configuration.allows(port: port) else {
            return refuse("port not allowed")
        }
        guard !server.portsInUse.contains(port), let address = configuration.proxyAddress(port: port) else {
            return refuse("port already used")
        }
        let proxy = TCPProxy(control: self, name: name, port: port, useEncryption: request.useEncryption ?? false,
                             useCompression: request.useCompression ?? false)
        do {
            try proxy.listen(on: address)
        } catch {
            logger.warning("frp proxy port cannot be bound", metadata: ["port": "\(port)", "error": "\(error)"])
            return refuse("port unavailable")
        }
        proxies[name] = proxy
        server.proxyOwners[name] = self
        server.portsInUse.insert(port)
        server.tunnels.withLock { $0[port] = FRPTunnel(name: name, port: port, client: peer, runID: runID) }
        server.metrics.proxies.increment()
        logger.info("frp proxy open", metadata: ["run_id": "\(runID)", "proxy": "\(name)", "listen": "\(address)"])
        return .init(proxyName: request.proxyName ?? "", remoteAddress: ":\(port)", error: "")
    }

    private func close(_ proxy: TCPProxy) async {
        guard proxies[proxy.name] === proxy else { return }
        proxies[proxy.name] = nil
        server.metrics.proxies.decrement()
        await proxy.stop()
        // Free the name and port once the listener has stopped, not before.
        if server.proxyOwners[proxy.name] === self { server.proxyOwners[proxy.name] = nil }
        server.portsInUse.remove(proxy.port)
        server.tunnels.withLock { _ = $0.removeValue(forKey: proxy.port) }
    }

    // MARK: Work connections

    func addWorkConnection(_ stream: any ByteStream) {
        guard !ended else { return stream.abort() }
        pool.append(stream)
        server.metrics.workConnectionsPooled.increment()
        if !poolWaiters.isEmpty { poolWaiters.removeFirst().signal() }
    }

    /// A work connection for a user connection: a pooled one, or one asked for now, waiting at
    /// most 10 s. Either way a replacement is asked for once one is taken (as frps does).
    func takeWorkConnection() async -> (any ByteStream)? {
        if pool.isEmpty {
            guard await send(.requestWorkConnection) else { return nil }
            let deadline = loop.now &+ Self.workConnectionTimeout.nanoseconds
            while pool.isEmpty {
                let now = loop.now
                guard !ended, now < deadline else { return nil }
                let wait = LoopWait(loop: loop)
                poolWaiters.append(wait)
                if !(await wait.wait(timeout: .nanoseconds(Int64(deadline - now)))) {
                    poolWaiters.removeAll { $0 === wait }
                }
            }
        }
        guard !ended, !pool.isEmpty else { return nil }
        loop.spawn { [self] in _ = await send(.requestWorkConnection) }
        server.metrics.workConnectionsPooled.decrement()
        return pool.removeFirst()
    }
}
