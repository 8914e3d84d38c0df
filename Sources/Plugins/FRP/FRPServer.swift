import CoreMetrics
import CShims
import Foundation
import Glibc
import HarpKernel
import Logging
import Synchronization

/// The tunnel server: accepts frpc connections, tells TLS from plaintext and yamux from a bare
/// control connection by their first bytes, checks logins, and keeps the registry of controls
/// (by run id), proxy names and bound ports.
///
/// Runs on one loop (`loop`): a work connection must meet its user connection on the loop of
/// its control, and one loop moves GB/s — ExApp tunnels need far less.
final class FRPServer: @unchecked Sendable {
    // @unchecked Sendable: the registries below are touched only on `loop`'s thread (every
    // connection is served there); configuration, contexts and checks are fixed before start.
    let configuration: FRPConfiguration
    let logger: Logger
    /// Set before the listener starts (at init, or at start once generated); fixed after.
    var tls: TLSContext?
    let metrics = FRPMetrics()
    /// AES key for control streams and encrypted proxies, derived from the token.
    let cipherKey: [UInt8]
    var loginChecks: [any FRPLoginCheck] = []
    private(set) var loop: EventLoop!
    private var controls: [String: ClientControl] = [:]
    var proxyOwners: [String: ClientControl] = [:]
    var portsInUse: Set<Int> = []
    /// The open proxies by port, for other loops (the ExApps gateway's tunnel status and its
    /// Docker passthrough): written with `portsInUse`, read from any thread.
    let tunnels = Mutex<[Int: FRPTunnel]>([:])

    /// frp's own deadline for the first bytes and the first message of a connection.
    static let firstMessageTimeout: Duration = .seconds(10)
    /// The version harp answers logins with (the frps it stands in for).
    static let version = "0.65.0"

    init(configuration: FRPConfiguration, tls: TLSContext?, logger: Logger) {
        self.configuration = configuration
        self.tls = tls
        self.logger = logger
        cipherKey = FRPAuth.cipherKey(token: configuration.token)
        if !configuration.sharedKey.isEmpty { loginChecks.append(SharedKeyCheck(sharedKey: configuration.sharedKey)) }
    }

    func attach(to loop: EventLoop) { self.loop = loop }

    // MARK: Accepting

    /// One accepted connection: TLS or not, yamux or not, then its first message.
    func serve(_ socket: SocketStream) async {
        loop.assertInLoop()
        let peer = socket.peer.map { "\($0)" } ?? "?"
        // The handshake and the first message together within this, however slowly the
        // client trickles them (a byte every few seconds must not hold the connection).
        let deadline = socket.loop.now + Self.firstMessageTimeout.nanoseconds
        guard await socket.waitReadable(timeout: Self.firstMessageTimeout) > 0 else {
            logger.info("frp connection closed: nothing sent within 10 s", metadata: ["peer": "\(peer)"])
            socket.abort()
            return
        }
        guard let first = Self.peekByte(socket) else {
            // Connected and closed without a byte: a port probe or a health check.
            logger.debug("frp connection closed at once without sending anything", metadata: ["peer": "\(peer)"])
            socket.abort()
            return
        }
        var stream: any ByteStream = socket
        if first == 0x17 || first == 0x16 {
            guard let tls else {
                logger.info("frp connection refused: TLS is off ([frp] tls = \"off\")", metadata: ["peer": "\(peer)"])
                socket.abort()
                return
            }
            // 0x17 is frp's own marker before a TLS ClientHello; 0x16 is a ClientHello itself.
            if first == 0x17 { Self.dropByte(socket) }
            do {
                let secure = try TLSStream(transport: socket, context: tls, isServer: true)
                try await secure.handshake(timeout: Self.firstMessageTimeout)
                stream = secure
            } catch {
                if error.concernsCertificate {
                    // A client with the wrong certificate (or none) never gets in: the admin must see it.
                    logger.warning("frp TLS handshake failed: the client's certificate is missing or not signed by cert_dir's ca.crt",
                                   metadata: ["peer": "\(peer)", "error": "\(error)"])
                } else {
                    logger.info("frp TLS handshake failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
                }
                socket.abort()
                return
            }
        } else if configuration.tls != .off {
            logger.info("frp connection refused: plaintext while [frp] tls = \"\(configuration.tls.rawValue)\"", metadata: ["peer": "\(peer)"])
            socket.abort()
            return
        }
        let reader = FramedReader(stream: stream, capacity: 64 * 1024)
        guard await reader.fill(timeout: Self.firstMessageTimeout) > 0 else {
            logger.debug("frp connection closed before its first message", metadata: ["peer": "\(peer)"])
            stream.abort()
            return
        }
        // A yamux session starts with its version byte, 0; an frp message with its type letter.
        if reader.buffer.readable[0] == 0 {
            await serveSession(stream, buffered: reader.buffer, peer: peer)
        } else {
            await handle(stream, reader: reader, peer: peer, deadline: deadline)
        }
    }

    /// tcpMux: every stream the client opens is a control or a work connection.
    private func serveSession(_ stream: any ByteStream, buffered: ReadBuffer, peer: String) async {
        var settings = YamuxSession.Settings()
        settings.maxStreamWindow = 6 * 1024 * 1024  // what frp configures on both sides
        // A client's pool is at most 5 and each user connection takes one work stream: 256 open
        // streams bound what one connection can make harp hold (256 × 256 KiB unread).
        settings.maxStreams = 256
        // Pings every third of the heartbeat timeout; two unanswered end the session.
        settings.keepAliveInterval = configuration.heartbeatTimeout.duration / 3
        let session = YamuxSession(transport: stream, isClient: false, settings: settings, buffered: buffered)
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await session.run() }
            while let opened = await session.accept() {
                let deadline = opened.loop.now + Self.firstMessageTimeout.nanoseconds
                group.addTask {
                    await self.handle(opened, reader: FramedReader(stream: opened, capacity: 16 * 1024), peer: peer, deadline: deadline)
                }
            }
        }
        logger.info("frp session ended", metadata: ["peer": "\(peer)", "reason": "\(session.endReason ?? "-")"])
    }

    /// The first message decides: Login starts a control, NewWorkConn joins a control's pool.
    private func handle(_ stream: any ByteStream, reader: FramedReader, peer: String, deadline: UInt64) async {
        let message: FRPMessage
        do {
            message = try await reader.readMessage(timeout: Self.firstMessageTimeout, until: deadline)
        } catch {
            logger.info("frp connection closed", metadata: ["peer": "\(peer)", "reason": "\(error)"])
            stream.abort()
            return
        }
        switch message {
        case .login(let login):
            await self.login(login, stream: stream, reader: reader, peer: peer)
        case .newWorkConnection(let work):
            guard let runID = work.runID, let control = controls[runID] else {
                logger.info("frp work connection for an unknown run id", metadata: ["peer": "\(peer)", "run_id": "\(work.runID ?? "")"])
                stream.abort()
                return
            }
            guard reader.buffer.isEmpty else {
                logger.info("frp work connection sent bytes before StartWorkConn", metadata: ["peer": "\(peer)"])
                stream.abort()
                return
            }
            control.addWorkConnection(stream)
        default:
            logger.info("frp connection closed: the first message must be Login or NewWorkConn", metadata: ["peer": "\(peer)"])
            stream.abort()
        }
    }

    // MARK: Logins

    private func login(_ login: FRPMessage.Login, stream: any ByteStream, reader: FramedReader, peer: String) async {
        if let refusal = await check(login, peer: stream.peer) {
            metrics.loginRefused(refusal.metric)
            logger.warning("frp login refused", metadata: ["peer": "\(peer)", "user": "\(login.user ?? "")", "reason": "\(refusal.reason)"])
            let response = FRPMessage.loginResponse(.init(version: Self.version, runID: "", error: refusal.reason))
            _ = await stream.write(response.encoded(), timeout: .seconds(5))
            await stream.close()
            return
        }
        let runID = (login.runID?.isEmpty == false) ? login.runID! : Self.newRunID()
        if let previous = controls[runID] {
            logger.info("frp client reconnected; replacing its previous control", metadata: ["run_id": "\(runID)"])
            await previous.end(reason: "replaced by a new login with the same run id")
        }
        let control = ClientControl(server: self, runID: runID, login: login, stream: stream, leftover: reader.buffer, peer: peer)
        controls[runID] = control
        metrics.clientsOnline.increment()
        logger.info("frp client logged in", metadata: ["peer": "\(peer)", "run_id": "\(runID)", "user": "\(login.user ?? "")",
                                                       "version": "\(login.version ?? "")"])
        await control.run()
        if controls[runID] === control { controls[runID] = nil }
        metrics.clientsOnline.decrement()
    }

    /// The token (when set), then every login check; the reason of the first refusal.
    private func check(_ login: FRPMessage.Login, peer: SocketAddress?) async -> (reason: String, metric: String)? {
        if !configuration.token.isEmpty {
            let expected = FRPAuth.privilegeKey(token: configuration.token, timestamp: login.timestamp ?? 0)
            guard SecretComparison.equal(login.privilegeKey ?? "", expected) else {
                return ("token in login doesn't match token from configuration", "token")
            }
        }
        let attempt = FRPLoginAttempt(clientAddress: peer, user: login.user ?? "", hostname: login.hostname ?? "", metas: login.metas ?? [:])
        for check in loginChecks {
            if let refusal = await check.check(attempt) { return (refusal.description, check is SharedKeyCheck ? "shared_key" : "check") }
        }
        return nil
    }

    /// 16 hex characters from 8 random bytes, like frps.
    static func newRunID() -> String {
        var bytes = [UInt8](repeating: 0, count: 8)
        _ = RAND_bytes(&bytes, 8)
        return bytes.map { String(format: "%02x", $0) }.joined()
    }

    // MARK: Bytes on a socket

    private static func peekByte(_ socket: SocketStream) -> UInt8? {
        var byte: UInt8 = 0
        return Glibc.recv(socket.fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) == 1 ? byte : nil
    }

    private static func dropByte(_ socket: SocketStream) {
        var byte: UInt8 = 0
        _ = Glibc.recv(socket.fd, &byte, 1, Int32(MSG_DONTWAIT))
    }

    /// Ends every control (shutdown).
    func endAll() async {
        for control in controls.values { await control.end(reason: "server shutting down") }
    }
}
