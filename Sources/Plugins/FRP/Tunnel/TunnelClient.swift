import CShims
import Foundation
import Glibc
import HarpKernel
import Logging

/// `harp tunnel`: an frpc-compatible client. Logs in (keeping its run id across reconnects),
/// registers its tcp proxies, answers ReqWorkConn by opening a work connection (a yamux stream
/// with tcpMux, else a new connection) and relays it to the local service, and reconnects
/// with back-off (1 s doubling to 20 s) when the control ends.
///
/// Loop-confined: everything runs on one loop.
final class TunnelClient: @unchecked Sendable {
    // @unchecked Sendable: all state is touched only on `loop`'s thread.
    let configuration: TunnelConfiguration
    let loop: EventLoop
    let logger: Logger
    let tls: TLSContext?
    let cipherKey: [UInt8]
    let server: SocketAddress
    private var runID = ""
    private var session: YamuxSession?
    private let proxies: [String: TunnelConfiguration.Proxy]

    init(configuration: TunnelConfiguration, loop: EventLoop, logger: Logger) throws {
        self.configuration = configuration
        self.loop = loop
        self.logger = logger
        cipherKey = FRPAuth.cipherKey(token: configuration.token)
        let host = configuration.serverAddress.contains(":") ? "[\(configuration.serverAddress)]" : configuration.serverAddress
        server = try SocketAddress(parsing: "\(host):\(configuration.serverPort)")
        proxies = Dictionary(configuration.proxies.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        if configuration.tls {
            // frpc verifies the server only when given a CA (InsecureSkipVerify otherwise).
            let context = try TLSContext.client(ca: configuration.trustedCAFile, verify: configuration.trustedCAFile != nil,
                                                certificate: configuration.certFile, key: configuration.keyFile, alpn: [])
            context.preferAES128()
            tls = context
        } else {
            tls = nil
        }
    }

    enum Outcome {
        /// The server answered the login with an error.
        case refused(String)
        /// No control came up (connect, TLS, yamux or the login exchange failed).
        case failed(String)
        /// A control ran and ended.
        case ended(String)
    }

    /// Runs until the process is stopped; returns 1 when the first login fails and
    /// `loginFailExit` is set (frpc's default).
    func run() async -> Int32 {
        var backoff: Duration = .seconds(1)
        var first = true
        while true {
            switch await connectAndServe() {
            case .refused(let reason):
                logger.error("login to the server failed: \(reason)")
                if first && configuration.loginFailExit { return 1 }
            case .failed(let reason):
                logger.warning("connect to server error: \(reason)")
                if first && configuration.loginFailExit { return 1 }
            case .ended(let reason):
                logger.info("control ended: \(reason); reconnecting")
                backoff = .seconds(1)
            }
            first = false
            let timer = AsyncCompletion()
            _ = await loop.sleep(for: backoff, using: timer)
            backoff = min(backoff * 2, .seconds(20))
        }
    }

    // MARK: Connections

    /// A new connection to the server: TCP, then (with TLS) frp's 0x17 marker if asked for and
    /// the client handshake (SNI: `serverName`, else the server address).
    private func dial() async throws -> any ByteStream {
        let socket = try await SocketStream.connect(to: server, on: loop, timeout: .seconds(10))
        guard let tls else { return socket }
        if !configuration.disableCustomTLSFirstByte {
            guard await socket.write([0x17], timeout: .seconds(10)) == 0 else { throw FRPProtocolError("sending the TLS marker failed") }
        }
        let stream = try TLSStream(transport: socket, context: tls, isServer: false,
                                   serverName: configuration.serverName ?? configuration.serverAddress)
        try await stream.handshake(timeout: .seconds(10))
        return stream
    }

    /// A stream for a control or work connection: a new yamux stream, or a new connection.
    private func openStream() async -> (any ByteStream)? {
        if configuration.tcpMux { return await session?.open() }
        return try? await dial()
    }

    private func connectAndServe() async -> Outcome {
        let connection: any ByteStream
        do {
            connection = try await dial()
        } catch {
            return .failed("\(error)")
        }
        var control = connection
        if configuration.tcpMux {
            var settings = YamuxSession.Settings()
            settings.maxStreamWindow = 6 * 1024 * 1024
            let session = YamuxSession(transport: connection, isClient: true, settings: settings)
            self.session = session
            loop.spawn { await session.run() }
            guard let stream = await session.open() else { return .failed("yamux session ended") }
            control = stream
        }
        defer {
            session?.end("control ended")
            session = nil
            connection.abort()
        }
        let timestamp = Int64(Date().timeIntervalSince1970)
        let login = FRPMessage.Login(version: FRPServer.version, hostname: nil, os: "linux", arch: Self.arch,
                                     user: configuration.user.isEmpty ? nil : configuration.user,
                                     privilegeKey: FRPAuth.privilegeKey(token: configuration.token, timestamp: timestamp),
                                     timestamp: timestamp, runID: runID.isEmpty ? nil : runID, clientID: nil,
                                     metas: configuration.metadatas.isEmpty ? nil : configuration.metadatas,
                                     poolCount: configuration.poolCount)
        guard await control.write(FRPMessage.login(login).encoded(), timeout: .seconds(10)) == 0 else { return .failed("sending Login failed") }
        let plainReader = FramedReader(stream: control, capacity: 16 * 1024)
        let response: FRPMessage.LoginResponse
        do {
            guard case .loginResponse(let answer) = try await plainReader.readMessage(timeout: .seconds(10)) else {
                return .failed("the server did not answer Login with LoginResp")
            }
            response = answer
        } catch {
            return .failed("\(error)")
        }
        guard response.error.isEmpty else { return .refused(response.error) }
        runID = response.runID
        logger.info("login to server success, get run id [\(runID)]")

        let secure = CipherStream(PrefixedStream(control, buffered: plainReader.buffer), key: cipherKey)
        let writer = FrameWriter(stream: secure)
        for proxy in configuration.proxies {
            let request = FRPMessage.NewProxy(proxyName: proxy.name, proxyType: "tcp", useEncryption: proxy.useEncryption,
                                              useCompression: proxy.useCompression, remotePort: proxy.remotePort)
            guard await writer.write(FRPMessage.newProxy(request).encoded(), timeout: .seconds(10)) == 0 else { return .ended("control stream failed") }
        }
        // Without tcpMux the server watches for Pings (90 s); with it, yamux keeps the session.
        // The control's end cancels the heartbeat's sleep (the ring timer, not the task: a task
        // cancellation does not reach a ring operation), so no Ping goes to a dead control.
        let heartbeatTimer = AsyncCompletion()
        if !configuration.tcpMux {
            loop.spawn { [loop] in
                while await loop.sleep(for: .seconds(30), using: heartbeatTimer) == 0 {
                    guard await writer.write(FRPMessage.ping(.init(privilegeKey: nil, timestamp: nil)).encoded(), timeout: .seconds(10)) == 0 else { return }
                }
            }
        }
        defer { if heartbeatTimer.isPending { loop.cancel(heartbeatTimer) } }
        let reader = FramedReader(stream: secure, capacity: 16 * 1024)
        while true {
            let message: FRPMessage
            do {
                message = try await reader.readMessage(timeout: configuration.tcpMux ? nil : .seconds(90))
            } catch {
                return .ended("\(error)")
            }
            switch message {
            case .newProxyResponse(let answer):
                if answer.error.isEmpty {
                    logger.info("[\(answer.proxyName)] start proxy success (remote \(answer.remoteAddress))")
                } else {
                    logger.error("[\(answer.proxyName)] start error: \(answer.error)")
                }
            case .requestWorkConnection:
                loop.spawn { await self.workConnection() }
            case .pong(let pong):
                if !pong.error.isEmpty { return .ended("server said: \(pong.error)") }
            default:
                logger.info("ignoring an unexpected message from the server")
            }
        }
    }

    /// Answers one ReqWorkConn: a new work connection that waits for StartWorkConn and then
    /// carries one user connection to the local service.
    private func workConnection() async {
        guard let stream = await openStream() else { return }
        let hello = FRPMessage.newWorkConnection(.init(runID: runID, privilegeKey: nil, timestamp: nil))
        guard await stream.write(hello.encoded(), timeout: .seconds(10)) == 0 else { return stream.abort() }
        let reader = FramedReader(stream: stream, capacity: 16 * 1024)
        guard case .startWorkConnection(let start)? = try? await reader.readMessage(timeout: nil), start.error.isEmpty,
              let proxy = proxies[start.proxyName] else {
            return stream.abort()
        }
        let local: any ByteStream
        do {
            switch proxy.local {
            case .address(let address): local = try await SocketStream.connect(to: address, on: loop, timeout: .seconds(10))
            case .unixSocket(let path): local = try await SocketStream.connect(to: .unix(path: path), on: loop, timeout: .seconds(10))
            }
        } catch {
            logger.warning("[\(proxy.name)] connect to local service failed: \(error)")
            return stream.abort()
        }
        // User bytes may have come with StartWorkConn: they go first.
        let carried = PrefixedStream(stream, buffered: reader.buffer)
        // frp's layers: local bytes → snappy (useCompression) → AES-CFB (useEncryption) → wire.
        var tunnel: any ByteStream = carried
        if proxy.useEncryption { tunnel = CipherStream(tunnel, key: cipherKey) }
        if proxy.useCompression { tunnel = SnappyStream(tunnel) }
        _ = await loop.relay(local, tunnel, idleTimeout: .seconds(1800))
        await local.close()
        await tunnel.close()
    }

    static var arch: String {
        var info = utsname()
        uname(&info)
        let machine = withUnsafeBytes(of: info.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return machine == "x86_64" ? "amd64" : machine == "aarch64" ? "arm64" : machine
    }
}
