import Foundation
import Glibc
import HarpKernel
import HarpTestSupport
import Testing

/// No connection can stall a loop: with one loop (everything on one thread), a peer that stops
/// reading or an origin that stops answering holds its own connection only, while the admin
/// endpoint on the same loop answers 20 requests one after another, each within a second
/// (`assertLoopTurns`). Each case failed before every loop socket was non-blocking: the loop
/// sat in splice() writing into the stalled socket.
@Suite("isolation: no peer stalls a loop", .serialized)
struct IsolationTests {
    static func config(admin: UInt16, grace: String = "1s", extraSettings: String = "", _ body: String) -> String {
        """
        [harp]
        threads = 1
        shutdown_grace = "\(grace)"
        log_level = "warning"
        \(extraSettings)
        [admin]
        listen = "127.0.0.1:\(admin)"
        \(body)
        """
    }

    static func httpRoute(port: UInt16, upstream: String, tls: TestCertificates? = nil) -> String {
        let listener = tls.map {
            """
            listen = []
            [[http.listen_tls]]
            listen = "127.0.0.1:\(port)"
            cert = "\($0.certificate("localhost"))"
            key = "\($0.key("localhost"))"
            """
        } ?? "listen = [\"127.0.0.1:\(port)\"]"
        return """
            [http]
            access_log = false
            \(listener)
            [[http.routes]]
            path_prefix = "/"
            upstream = "\(upstream)"
            """
    }

    /// Holds `stall` against a running harp for a moment (so that harp's side fills up), then
    /// probes the loop; harp must still stop cleanly afterwards.
    static func probe(_ harp: HarpProcess, admin: UInt16, holding stall: StalledPeer) throws {
        Thread.sleep(forTimeInterval: 1)
        #expect(stall.process.isRunning, "the stalled peer is still connected while the loop is probed")
        do {
            try assertLoopTurns(adminPort: admin)
        } catch {
            throw TestFailure("\(error); harp's stderr ends: \(harp.stderr.suffix(2000))")
        }
        stall.stop()
        #expect(try harp.stop() == 0)
    }

    @Test("a client that never reads a 64 MB response (plain and HTTPS) or a chunked one", arguments: ["plain", "tls", "chunked"])
    func responseNeverRead(kind: String) throws {
        let admin = freePort(), port = freePort()
        let pki = kind == "tls" ? try TestCertificates() : nil
        defer { pki?.remove() }
        let nginx = try NginxOrigin(files: ["big": 64 << 20])
        let chunked = try HTTPTestOrigin()
        defer { chunked.stop() }
        let upstream = kind == "chunked" ? "http://127.0.0.1:\(chunked.address.port!)" : "http://127.0.0.1:\(nginx.port)"
        let harp = try HarpProcess.serve(Self.config(admin: admin, Self.httpRoute(port: port, upstream: upstream, tls: pki)))
        let path = kind == "chunked" ? "/chunked/200000000" : "/big"
        let stall = try StalledPeer(["get", "\(port)", path] + (kind == "tls" ? ["tls"] : []))
        try Self.probe(harp, admin: admin, holding: stall)
    }

    @Test("a tcp forward whose client never reads what the upstream streams")
    func forwardNeverRead() throws {
        let admin = freePort(), port = freePort()
        let source = try StreamingSource()
        defer { source.stop() }
        let harp = try HarpProcess.serve(Self.config(admin: admin, """
            [[tcp.forward]]
            listen = "127.0.0.1:\(port)"
            upstream = "127.0.0.1:\(source.address.port!)"
            """))
        let stall = try StalledPeer(["read-nothing", "\(port)"])
        try Self.probe(harp, admin: admin, holding: stall)
    }

    @Test("an origin that stops reading an upload (Content-Length and chunked)", arguments: ["length", "chunked"])
    func uploadNeverRead(framing: String) throws {
        let admin = freePort(), port = freePort(), origin = freePort()
        let deaf = try StalledPeer(["deaf-origin", "\(origin)"])
        let harp = try HarpProcess.serve(Self.config(admin: admin, Self.httpRoute(port: port, upstream: "http://127.0.0.1:\(origin)")))
        let upload = try StalledPeer(["upload", "\(port)", "/upload", "\(100 << 20)"] + (framing == "chunked" ? ["chunked"] : []))
        try Self.probe(harp, admin: admin, holding: upload)
        deaf.stop()
    }

    @Test("a WebSocket client that never reads its echoes (spliced and inspected)", arguments: ["/chat", "/inspect/chat"])
    func webSocketNeverRead(path: String) throws {
        let admin = freePort(), port = freePort(), echoPort = freePort()
        let echo = try shellBackground("exec python3 \(Self.wsPeer) server \(echoPort)")
        defer { kill(echo.processIdentifier, SIGKILL); echo.waitUntilExit() }
        guard waitForListener(port: echoPort) else { throw TestFailure("the WebSocket echo server did not start") }
        let harp = try HarpProcess.serve(Self.config(admin: admin, Self.httpRoute(port: port, upstream: "http://127.0.0.1:\(echoPort)") + """

            [websocket]
            [[websocket.inspect]]
            path_prefix = "/inspect/"
            """))
        let stall = try StalledPeer(["ws-read-nothing", "ws://127.0.0.1:\(port)\(path)"])
        try Self.probe(harp, admin: admin, holding: stall)
    }

    static let wsPeer = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("WebSocketTests/ws_peer.py").path

    // MARK: frp

    static func frpServer(port: UInt16, tls: Bool, certs: TestCertificates?, allow: [UInt16]) -> String {
        """
        [frp]
        listen = "127.0.0.1:\(port)"
        tls = "\(tls ? "on" : "off")"
        cert_dir = "\(certs?.directory ?? "/nonexistent")"
        shared_key = "isolation-test-key"
        max_ports_per_client = 0
        allow_ports = [\(allow.map { "\"\($0)\"" }.joined(separator: ", "))]
        """
    }

    /// frpc's TOML (for upstream frpc and `harp tunnel` alike) publishing `proxies`
    /// (name, local port, remote port).
    static func frpClient(server: UInt16, tls: Bool, mux: Bool, encryption: Bool, proxies: [(String, UInt16, UInt16)]) -> String {
        """
        serverAddr = "127.0.0.1"
        serverPort = \(server)
        loginFailExit = true
        metadatas.token = "isolation-test-key"
        transport.tls.enable = \(tls)
        transport.tcpMux = \(mux)
        """ + proxies.map { name, local, remote in
            """

            [[proxies]]
            name = "\(name)"
            type = "tcp"
            localIP = "127.0.0.1"
            localPort = \(local)
            remotePort = \(remote)
            transport.useEncryption = \(encryption)
            """
        }.joined()
    }

    @Test("frp tunnels: a user that never reads, and a local service that never reads (plaintext, TLS, tcpMux, encryption)",
          arguments: ["plain", "tls", "mux", "encryption"])
    func frpTunnel(setup: String) throws {
        let admin = freePort(), frp = freePort(), down = freePort(), up = freePort(), deafPort = freePort()
        let certs = setup == "tls" ? try TestCertificates(names: [("server", "DNS:harp.nc"), ("client", "DNS:harp.client.nc")], extension: "crt") : nil
        defer { certs?.remove() }
        let source = try StreamingSource()
        defer { source.stop() }
        let deaf = try StalledPeer(["deaf-server", "\(deafPort)"])
        let harp = try HarpProcess.serve(Self.config(admin: admin, Self.frpServer(port: frp, tls: setup == "tls", certs: certs, allow: [down, up])))
        let tunnel = try FRPClient(config: Self.frpClient(server: frp, tls: setup == "tls", mux: setup == "mux", encryption: setup == "encryption",
                                                          proxies: [("down", source.address.port!, down), ("up", deafPort, up)]),
                                   kind: .harpTunnel)
        defer { tunnel.kill() }
        guard waitForListener(port: down), waitForListener(port: up) else {
            throw TestFailure("the tunnel's ports never listened; harp tunnel said: \(tunnel.log.suffix(600))")
        }
        let reader = try StalledPeer(["read-nothing", "\(down)"])
        let sender = try StalledPeer(["send-forever", "\(up)"])
        try Self.probe(harp, admin: admin, holding: reader)
        _ = (sender, deaf)
    }

    @Test("an http route whose upstream is harp's own frp proxy port: 100 MB up and 100 MB down, intact",
          .enabled(if: FRPClient.isAvailable, "frpc is not installed (scripts/install-deps)"), arguments: FRPClient.Kind.allCases)
    func routeThroughOwnTunnel(kind: FRPClient.Kind) throws {
        let admin = freePort(), port = freePort(), frp = freePort(), downRemote = freePort(), upRemote = freePort()
        let size = 100_000_000
        let nginx = try NginxOrigin(files: ["big": size])
        let hashing = try HTTPTestOrigin()
        defer { hashing.stop() }
        let harp = try HarpProcess.serve(Self.config(admin: admin, """
            \(Self.frpServer(port: frp, tls: false, certs: nil, allow: [downRemote, upRemote]))
            [http]
            access_log = false
            listen = ["127.0.0.1:\(port)"]
            [[http.routes]]
            path_prefix = "/big"
            upstream = "http://127.0.0.1:\(downRemote)"
            [[http.routes]]
            path_prefix = "/hash"
            upstream = "http://127.0.0.1:\(upRemote)"
            """))
        let tunnel = try FRPClient(config: Self.frpClient(server: frp, tls: false, mux: true, encryption: false,
                                                          proxies: [("down", nginx.port, downRemote), ("up", hashing.address.port!, upRemote)]),
                                   kind: kind)
        defer { tunnel.kill() }
        guard waitForListener(port: downRemote, timeout: 60), waitForListener(port: upRemote, timeout: 60) else {
            throw TestFailure("the tunnel's ports never listened; \(kind) said: \(tunnel.log.suffix(600))")
        }
        let expected = try shell("sha256sum \(nginx.root)/big | cut -d' ' -f1").output
        let downloaded = try shell("curl -sS --max-time 120 http://127.0.0.1:\(port)/big | sha256sum | cut -d' ' -f1").output
        #expect(downloaded == expected, "100 MB down through harp's own tunnel")
        let uploaded = try shell("curl -sS --max-time 120 --data-binary @\(nginx.root)/big -H 'Content-Type: application/octet-stream' http://127.0.0.1:\(port)/hash").output
        #expect(uploaded == "\(expected) \(size)", "100 MB up through harp's own tunnel (Content-Length, spliced into the proxy port)")
        try assertLoopTurns(adminPort: admin, count: 3)
        #expect(try harp.stop() == 0)
    }

    // MARK: p2p

    @Test("a P2P peer that requests every chunk of a 64 MB file and never reads them")
    func peerNeverReads() throws {
        let admin = freePort()
        let node = try P2PNode(), hostile = try P2PNode()
        defer { for peer in [node, hostile] { peer.remove() } }
        try NginxOrigin.writeRandomFile(node.folder + "/big", size: 64 << 20)
        node.harpSettings = "threads = 1"
        try node.configure(peers: [hostile], admin: admin)
        try node.start()
        let root = try node.add("big")
        let stall = try StalledPeer(["p2p-read-nothing", "\(node.port)", "\(hostile.dir)/node.crt", "\(hostile.dir)/node.key", root])
        try Self.probe(node.process!, admin: admin, holding: stall)
    }

    @Test("a client that trickles its TLS handshake a byte every 2 s is closed at the deadline (p2p 10 s, frp 10 s), not kept")
    func trickledHandshakes() throws {
        let admin = freePort(), frp = freePort()
        let node = try P2PNode()
        let certs = try TestCertificates(names: [("server", "DNS:harp.nc"), ("client", "DNS:harp.client.nc")], extension: "crt")
        defer { node.remove(); certs.remove() }
        node.harpSettings = "threads = 1"
        node.extraConfig = Self.frpServer(port: frp, tls: true, certs: certs, allow: [frp + 1])
        node.plugins = ["p2p", "frp"]
        try node.configure(peers: [], admin: admin)
        try node.start()
        let script = StalledPeer.script
        let started = Date()
        let results = try [node.port, frp].map { port in
            try shellBackground("python3 \(script) trickle \(port) > \(node.dir)/trickle-\(port).txt")
        }
        for process in results { process.waitUntilExit() }
        let seconds = Date().timeIntervalSince(started)
        for port in [node.port, frp] {
            let said = (try? String(contentsOfFile: "\(node.dir)/trickle-\(port).txt", encoding: .utf8)) ?? ""
            let after = Int(said.split(separator: " ").dropFirst(2).first ?? "") ?? -1
            #expect((9...13).contains(after), "port \(port): \(said)")
        }
        #expect(seconds < 20)
        try assertLoopTurns(adminPort: admin, count: 3)
    }

    // MARK: one address, one owner

    @Test("a second harp on the same addresses fails to start, naming the address and its key")
    func secondHarp() throws {
        let admin = freePort(), port = freePort()
        let config = Self.config(admin: admin, Self.httpRoute(port: port, upstream: "http://127.0.0.1:9"))
        let first = try HarpProcess.serve(config)
        let second = try HarpProcess(["serve"], config: config)
        let status = try second.waitForExit()
        #expect(status == 1)
        #expect(second.stderr.contains("admin.listen: bind 127.0.0.1:\(admin): Address already in use"), "stderr: \(second.stderr)")
        #expect(!second.stdout.contains("harp: ready"))
        try assertLoopTurns(adminPort: admin, count: 3)
        #expect(try first.stop() == 0)
    }

    @Test("HaRP's variables: a second harp names HP_EXAPPS_ADDRESS; equal ExApps and FRP addresses are a config error")
    func harpVariables() throws {
        let exapps = freePort(), frp = freePort()
        let certs = NSTemporaryDirectory() + "harp-iso-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: certs) }
        var environment = ["HP_SHARED_KEY": "isolation-test-key", "NC_INSTANCE_URL": "http://127.0.0.1:9",
                           "HP_EXAPPS_ADDRESS": "127.0.0.1:\(exapps)", "HP_FRP_ADDRESS": "127.0.0.1:\(frp)", "HARP_CERTS_DIR": certs]
        let first = try HarpProcess(["serve"], environment: environment)
        try first.waitForOutput("harp: ready")
        let second = try HarpProcess(["serve"], environment: environment)
        #expect(try second.waitForExit() == 1)
        #expect(second.stderr.contains("(HP_EXAPPS_ADDRESS): bind 127.0.0.1:\(exapps): Address already in use")
                || second.stderr.contains("(HP_FRP_ADDRESS): bind 127.0.0.1:\(frp): Address already in use"), "stderr: \(second.stderr)")
        environment["HP_FRP_ADDRESS"] = "127.0.0.1:\(exapps)"
        let check = try HarpProcess.run(["config", "check"], environment: environment)
        #expect(check.status == 1)
        #expect(check.stderr.contains("already used by"), "stderr: \(check.stderr)")
        #expect(check.stderr.contains("HP_FRP_ADDRESS") && check.stderr.contains("HP_EXAPPS_ADDRESS"), "stderr: \(check.stderr)")
        #expect(try first.stop() == 0)
    }

    @Test("two listeners of one config on one address (or a wildcard and a specific one) fail config check", arguments: [
        ("[admin]\nlisten = \"127.0.0.1:PORT\"\n[http]\nlisten = [\"127.0.0.1:PORT\"]",
         "http.listen[0] = \"127.0.0.1:PORT\" is invalid: already used by admin.listen"),
        ("[admin]\nlisten = \"0.0.0.0:PORT\"\n[[tcp.forward]]\nlisten = \"127.0.0.1:PORT\"\nupstream = \"127.0.0.1:9\"",
         "tcp.forward[0].listen = \"127.0.0.1:PORT\" is invalid: already used by admin.listen"),
    ])
    func duplicateAddresses(config: String, message: String) throws {
        let port = "\(freePort())"
        let result = try HarpProcess.run(["config", "check"], config: config.replacingOccurrences(of: "PORT", with: port))
        #expect(result.status == 1)
        #expect(result.stderr.contains(message.replacingOccurrences(of: "PORT", with: port)), "stderr: \(result.stderr)")
    }

    // MARK: signals

    @Test("SIGTERM with stalled peers connected ends harp within the grace period + 1 s")
    func terminateWithStalledPeers() throws {
        let admin = freePort(), port = freePort()
        let nginx = try NginxOrigin(files: ["big": 64 << 20])
        let harp = try HarpProcess.serve(Self.config(admin: admin, grace: "2s",
                                                     Self.httpRoute(port: port, upstream: "http://127.0.0.1:\(nginx.port)")))
        let stalls = try (0..<3).map { _ in try StalledPeer(["get", "\(port)", "/big"]) }
        Thread.sleep(forTimeInterval: 0.5)
        let started = Date()
        let status = try harp.stop(timeout: 10)
        let seconds = Date().timeIntervalSince(started)
        #expect(seconds < 3.5, "harp took \(seconds) s to exit after SIGTERM (grace 2 s)")
        #expect(status == 0, "connections that outlive the grace period are closed; that is a normal stop")
        #expect(harp.stderr.contains("grace period over"), "stderr: \(harp.stderr.suffix(500))")
        _ = stalls
    }

    @Test("a second SIGTERM during the grace period ends harp at once")
    func secondSignal() throws {
        let admin = freePort(), port = freePort()
        let nginx = try NginxOrigin(files: ["big": 64 << 20])
        let harp = try HarpProcess.serve(Self.config(admin: admin, grace: "60s",
                                                     Self.httpRoute(port: port, upstream: "http://127.0.0.1:\(nginx.port)")))
        let stall = try StalledPeer(["get", "\(port)", "/big"])
        kill(harp.pid, SIGTERM)
        Thread.sleep(forTimeInterval: 0.3)
        let started = Date()
        let status = try harp.stop(signal: SIGINT, timeout: 10)
        let seconds = Date().timeIntervalSince(started)
        #expect(seconds < 1, "harp took \(seconds) s to exit after the second signal")
        #expect(status == 1)
        #expect(harp.stderr.contains("second signal"), "stderr: \(harp.stderr.suffix(500))")
        _ = stall
    }

    // MARK: stall detector and watchdog

    @Test("a frozen loop is logged and counted, the systemd keep-alive stops, and the watchdog ends harp (exit 70)")
    func watchdog() throws {
        let admin = freePort()
        let notify = try NotifyListener()
        let harp = try HarpProcess.serve(Self.config(admin: admin, extraSettings: """
            watchdog_interval = "1s"
            watchdog_fails = 3
            """, ""), environment: ["HARP_DEBUG_FREEZE_LOOP": "0:60:2", "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"])
        harp.allowStalls = true
        let status = try harp.waitForExit(timeout: 20)
        #expect(status == StallDetector.watchdogExitStatus, "stderr: \(harp.stderr.suffix(1000))")
        #expect(harp.stderr.contains("loop 0 stalled for"), "the stall is logged while it lasts")
        #expect(harp.stderr.contains("the watchdog ends harp"))
        let messages = notify.received()
        #expect(messages.first?.text == "READY=1", "got \(messages.map(\.text))")
        // Keep-alives while the loop turns (2 s at one per 100 ms), none once it is frozen:
        // the last one comes before the freeze is 150 ms old (one detector tick late at most).
        let keepAlives = messages.filter { $0.text == "WATCHDOG=1" }
        let frozeAt = messages[0].time.addingTimeInterval(2)
        #expect(keepAlives.count >= 5, "got \(keepAlives.count) keep-alives before the freeze")
        let late = keepAlives.filter { $0.time > frozeAt.addingTimeInterval(0.5) }
        #expect(late.isEmpty, "WATCHDOG=1 sent \(late.count) times while loop 0 was frozen")
    }

    @Test("a stall shorter than the watchdog's limit is logged with its length and counted; harp goes on")
    func stallReported() throws {
        let admin = freePort()
        let harp = try HarpProcess.serve(Self.config(admin: admin, ""), environment: ["HARP_DEBUG_FREEZE_LOOP": "0:2:0"])
        harp.allowStalls = true
        try harp.waitForOutput("loop 0 stalled for", timeout: 10)
        try harp.waitForOutput("ms (in a task)", timeout: 10)
        let metrics = try TestSocket(connectingTo: loopback(admin))
        try metrics.send(Array("GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".utf8))
        let text = String(decoding: try metrics.receiveAll(), as: UTF8.self)
        #expect(text.contains("harp_loop_stalls_total{loop=\"0\"} 1"), "metrics: \(text.prefix(3000))")
        #expect(text.contains("harp_loop_stall_seconds_count{loop=\"0\"} 1"))
        #expect(harp.severeStalls.count == 2, "one line while it lasts, one when it ends: \(harp.stderr)")
        #expect(try harp.stop() == 0)
    }
}

/// A Unix datagram socket standing in for systemd's notify socket: records each state line
/// with the time it arrived.
final class NotifyListener: @unchecked Sendable {
    // @unchecked Sendable: `messages` is guarded by `lock`; the reader thread owns `fd`.
    struct Message { let text: String; let time: Date }
    let path = NSTemporaryDirectory() + "harp-notify-\(UUID().uuidString.prefix(8)).sock"
    private let fd: Int32
    private let lock = NSLock()
    private var messages: [Message] = []

    init() throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else { throw TestFailure("bind \(path): \(String(cString: strerror(errno)))") }
        Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = recv(fd, &buffer, buffer.count, 0)
                guard count > 0 else { return }
                let message = Message(text: String(decoding: buffer[0..<count], as: UTF8.self), time: Date())
                lock.withLock { messages.append(message) }
            }
        }.start()
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        unlink(path)
    }

    func received() -> [Message] { lock.withLock { messages } }
}
