import Foundation
import Glibc
import HarpKernel
import HarpTestSupport
import Testing

/// harp's FRP server with upstream frpc 0.65.0 (under qemu-user) as the client, and the same
/// matrix with `harp tunnel`: each case publishes a local echo server through a tcp proxy and
/// moves 1 MiB both ways through it.
@Suite("frp server with real frpc and with harp tunnel", .serialized, .enabled(if: FRPClient.isAvailable, "frpc is not installed (scripts/install-deps)"))
struct FRPInteropTests {
    static let clients = FRPClient.Kind.allCases

    struct LayerCase: Sendable, CustomStringConvertible {
        let encryption: Bool
        let compression: Bool
        let mux: Bool
        var description: String { "encryption \(encryption), compression \(compression), tcpMux \(mux)" }
    }

    static let sharedKey = "harp-test-shared-key"

    static func harpConfig(port: UInt16, tls: String = "off", certDir: String = "/nonexistent", token: String = "",
                           allow: String, extra: String = "") -> String {
        """
        [harp]
        threads = 1
        shutdown_grace = "1s"
        [frp]
        listen = "127.0.0.1:\(port)"
        tls = "\(tls)"
        cert_dir = "\(certDir)"
        token = "\(token)"
        shared_key = "\(sharedKey)"
        allow_ports = ["\(allow)"]
        \(extra)
        """
    }

    static func frpcConfig(serverPort: UInt16, localPort: UInt16, remotePort: UInt16, tls: Bool = false, mux: Bool = true,
                           token: String = "", metaToken: String = sharedKey, extra: String = "", proxyExtra: String = "") -> String {
        """
        serverAddr = "127.0.0.1"
        serverPort = \(serverPort)
        loginFailExit = true
        auth.token = "\(token)"
        metadatas.token = "\(metaToken)"
        transport.tls.enable = \(tls)
        transport.tcpMux = \(mux)
        log.level = "info"
        \(extra)

        [[proxies]]
        name = "echo"
        type = "tcp"
        localIP = "127.0.0.1"
        localPort = \(localPort)
        remotePort = \(remotePort)
        \(proxyExtra)
        """
    }

    /// 1 MiB through the proxy and back; true when every byte came back in order.
    static func echoes(through port: UInt16) -> Bool {
        guard let socket = try? TestSocket(connectingTo: loopback(port), timeoutSeconds: 20) else { return false }
        var generator = SeededGenerator(seed: UInt64(port))
        let payload = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let fd = socket.fd  // the sender thread writes while this one reads
        let sender = Thread {
            var offset = 0
            while offset < payload.count {
                let sent = payload[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if sent <= 0 { return }
                offset += sent
            }
        }
        sender.start()
        return (try? socket.receive(exactly: payload.count)) == payload
    }

    /// harp + an echo server + one frpc with `frpc`'s config; returns what the case checks.
    static func run(_ kind: FRPClient.Kind, harp harpConfig: (UInt16, UInt16) -> String, frpc: (UInt16, UInt16, UInt16) -> String,
                    check: (HarpProcess, FRPClient, UInt16, UInt16) throws -> Void) throws {
        let echo = try EchoServer()
        defer { echo.stop() }
        let port = freePort(), remote = freePort()
        let harp = try HarpProcess.serve(harpConfig(port, remote))
        let client = try FRPClient(config: frpc(port, echo.address.port!, remote), kind: kind)
        defer { client.kill() }
        try check(harp, client, port, remote)
        let status = try harp.stop()
        #expect(status == 0, "harp exited \(status); its stderr ends: \(harp.stderr.suffix(3000))")
    }

    static func served(_ remote: UInt16, _ client: FRPClient) -> Bool {
        let ready = waitForListener(port: remote)
        if !ready { Issue.record("proxy never listened; frpc said: \(client.log.suffix(600))") }
        return ready
    }

    @Test("a logged-in client that goes silent (SIGSTOP) is dropped after heartbeat_timeout and its port released",
          arguments: [(FRPClient.Kind.frpc, false), (.frpc, true), (.harpTunnel, true)])
    func silentClient(kind: FRPClient.Kind, mux: Bool) throws {
        let port = freePort(), remote = freePort()
        let echo = try EchoServer()
        defer { echo.stop() }
        let harp = try HarpProcess.serve(Self.harpConfig(port: port, allow: "\(remote)", extra: "heartbeat_timeout = \"3s\""))
        // Without tcpMux the client pings each second (frpc's default 30 s would look silent).
        let client = try FRPClient(config: Self.frpcConfig(serverPort: port, localPort: echo.address.port!, remotePort: remote, mux: mux,
                                                           extra: mux ? "" : "transport.heartbeatInterval = 1"), kind: kind)
        defer { kill(client.process.processIdentifier, SIGCONT); client.kill() }
        guard Self.served(remote, client) else { return }
        Thread.sleep(forTimeInterval: 4)
        #expect(Self.echoes(through: remote), "a live client is not dropped: it answers within the timeout")
        // A control that ended earlier (a client's reconnect, under load) has its own line:
        // wait for the next one.
        let goneBefore = harp.occurrences(of: "frp client gone")
        kill(client.process.processIdentifier, SIGSTOP)
        #expect(isListening(pid: harp.pid, port: remote), "harp listens on the proxy's port while the client lives")
        try harp.waitForOutput("frp client gone", count: goneBefore + 1, timeout: 15)
        #expect(!isListening(pid: harp.pid, port: remote), "the port is released; harp's log ends: \(harp.stderr.suffix(1500))")
        if mux {
            // The control stream of a dead session reads as reset; the log names the cause.
            #expect(harp.stderr.contains("yamux session ended: peer silent for two keep-alive intervals"), "\(harp.stderr.suffix(1500))")
        }
        let status = try harp.stop()
        #expect(status == 0, "harp's exit status \(status); its log ends: \(harp.stderr.suffix(2000))")
    }

    @Test("plaintext, without and with tcpMux: 1 MiB both ways through the tunnel", arguments: clients, [false, true])
    func plaintext(client kind: FRPClient.Kind, mux: Bool) throws {
        try Self.run(kind, harp: { Self.harpConfig(port: $0, allow: "\($1)") },
                     frpc: { Self.frpcConfig(serverPort: $0, localPort: $1, remotePort: $2, mux: mux) }) { _, client, _, remote in
            guard Self.served(remote, client) else { return }
            #expect(Self.echoes(through: remote))
            #expect(Self.echoes(through: remote), "a second connection takes a fresh work connection")
        }
    }

    @Test("TLS (frpc's defaults: 0x16 first, tcpMux) and frp's 0x17 marker, with an frp token", arguments: clients)
    func tls(client kind: FRPClient.Kind) throws {
        let pki = try frpCertificates()
        defer { pki.remove() }
        for marker in [true, false] {
            try Self.run(kind, harp: { Self.harpConfig(port: $0, tls: "on", certDir: pki.directory, token: "tok", allow: "\($1)") },
                         frpc: { Self.frpcConfig(serverPort: $0, localPort: $1, remotePort: $2, tls: true, token: "tok",
                                                 extra: "transport.tls.disableCustomTLSFirstByte = \(!marker)") }) { _, client, _, remote in
                guard Self.served(remote, client) else { return }
                #expect(Self.echoes(through: remote), "marker \(marker)")
            }
        }
    }

    @Test("mutual TLS with HaRP's certificate layout and serverName harp.nc; without a client certificate the client is refused", arguments: clients)
    func mutualTLS(client kind: FRPClient.Kind) throws {
        let pki = try frpCertificates()
        defer { pki.remove() }
        let clientTLS = """
            transport.tls.certFile = "\(pki.directory)/client.crt"
            transport.tls.keyFile = "\(pki.directory)/client.key"
            transport.tls.trustedCaFile = "\(pki.directory)/ca.crt"
            transport.tls.serverName = "harp.nc"
            """
        try Self.run(kind, harp: { Self.harpConfig(port: $0, tls: "mutual", certDir: pki.directory, allow: "\($1)") },
                     frpc: { Self.frpcConfig(serverPort: $0, localPort: $1, remotePort: $2, tls: true, extra: clientTLS) }) { _, client, _, remote in
            guard Self.served(remote, client) else { return }
            #expect(Self.echoes(through: remote))
        }
        try Self.run(kind, harp: { Self.harpConfig(port: $0, tls: "mutual", certDir: pki.directory, allow: "\($1)") },
                     frpc: { Self.frpcConfig(serverPort: $0, localPort: $1, remotePort: $2, tls: true) }) { harp, client, _, _ in
            #expect(client.waitForExit() != 0, "frpc without a client certificate gives up")
            #expect(throws: Never.self) { try harp.waitForOutput("frp TLS handshake failed: the client's certificate is missing", timeout: 5) }
            let line = harp.stderr.split(separator: "\n").first { $0.contains("frp TLS handshake failed") } ?? ""
            #expect(line.contains(" warning "), "an admin must see it: \(line)")
        }
    }

    @Test("harp frp gen-certs writes HaRP's layout (keys 0600, never over existing files); a mutual-TLS server with an empty cert_dir makes its own, and the client's certificate from it works", arguments: clients)
    func generatedCertificates(client kind: FRPClient.Kind) throws {
        let directory = NSTemporaryDirectory() + "harp-gen-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let made = try HarpProcess.run(["frp", "gen-certs", "--dir", directory + "/cli", "--days", "30"])
        #expect(made.status == 0, "\(made.stderr)")
        #expect(try shell("cd \(directory)/cli && openssl verify -CAfile ca.crt server.crt client.crt").output == "server.crt: OK\nclient.crt: OK")
        #expect(try shell("stat -c '%a %n' \(directory)/cli/*.key").output == "600 \(directory)/cli/client.key\n600 \(directory)/cli/server.key")
        #expect(try shell("openssl x509 -in \(directory)/cli/server.crt -noout -ext subjectAltName").output.contains("DNS:harp.nc"))
        let again = try HarpProcess.run(["frp", "gen-certs", "--dir", directory + "/cli"])
        #expect(again.status != 0 && again.stderr.contains("exists; harp does not replace certificates"), "\(again.stderr)")
        let serverDirectory = directory + "/server"
        let clientTLS = """
            transport.tls.certFile = "\(serverDirectory)/client.crt"
            transport.tls.keyFile = "\(serverDirectory)/client.key"
            transport.tls.trustedCaFile = "\(serverDirectory)/ca.crt"
            transport.tls.serverName = "harp.nc"
            """
        try Self.run(kind, harp: { Self.harpConfig(port: $0, tls: "mutual", certDir: serverDirectory, allow: "\($1)") },
                     frpc: { Self.frpcConfig(serverPort: $0, localPort: $1, remotePort: $2, tls: true, extra: clientTLS) }) { harp, client, _, remote in
            #expect(throws: Never.self) { try harp.waitForOutput("generated FRP certificates", timeout: 5) }
            guard Self.served(remote, client) else { return }
            #expect(Self.echoes(through: remote))
        }
    }

    @Test("use_encryption and use_compression on the proxy (snappy framing inside AES-128-CFB), with and without tcpMux",
          arguments: clients, [LayerCase(encryption: true, compression: false, mux: true),
                               LayerCase(encryption: false, compression: true, mux: false),
                               LayerCase(encryption: true, compression: true, mux: true),
                               LayerCase(encryption: true, compression: true, mux: false)])
    func encryptionAndCompression(client kind: FRPClient.Kind, layers: LayerCase) throws {
        try Self.run(kind, harp: { Self.harpConfig(port: $0, token: "tok", allow: "\($1)") },
                     frpc: { Self.frpcConfig(serverPort: $0, localPort: $1, remotePort: $2, mux: layers.mux, token: "tok",
                                             proxyExtra: "transport.useEncryption = \(layers.encryption)\ntransport.useCompression = \(layers.compression)") }) { _, client, _, remote in
            guard Self.served(remote, client) else { return }
            #expect(Self.echoes(through: remote))
        }
    }

    @Test("a unix_domain_socket proxy (frpc's plugin, as HaRP's ExApps use it) publishes a Unix socket", arguments: clients)
    func unixSocket(client kind: FRPClient.Kind) throws {
        let path = NSTemporaryDirectory() + "harp-frp-\(getpid())-\(kind == .frpc ? "a" : "b").sock"
        let echo = try EchoServer(unixPath: path)
        defer { echo.stop(); unlink(path) }
        let port = freePort(), remote = freePort()
        let harp = try HarpProcess.serve(Self.harpConfig(port: port, allow: "\(remote)"))
        let client = try FRPClient(config: """
            serverAddr = "127.0.0.1"
            serverPort = \(port)
            metadatas.token = "\(Self.sharedKey)"
            transport.tls.enable = false

            [[proxies]]
            name = "socket"
            type = "tcp"
            remotePort = \(remote)
            [proxies.plugin]
            type = "unix_domain_socket"
            unixPath = "\(path)"
            """, kind: kind)
        defer { client.kill() }
        guard Self.served(remote, client) else { return }
        #expect(Self.echoes(through: remote))
        #expect(try harp.stop() == 0)
    }

    @Test("metrics on the admin endpoint: clients online, proxies, work connections, bytes, refused logins by reason")
    func metrics() throws {
        let admin = freePort()
        try Self.run(.harpTunnel, harp: { Self.harpConfig(port: $0, allow: "\($1)", extra: "[admin]\nlisten = \"127.0.0.1:\(admin)\"") },
                     frpc: { Self.frpcConfig(serverPort: $0, localPort: $1, remotePort: $2) }) { harp, client, port, remote in
            guard Self.served(remote, client) else { return }
            #expect(Self.echoes(through: remote))
            let refused = try FRPClient(config: Self.frpcConfig(serverPort: port, localPort: 1, remotePort: remote &+ 1, metaToken: "wrong"),
                                        kind: .harpTunnel)
            _ = refused.waitForExit()
            let text = try shell("curl -s http://127.0.0.1:\(admin)/metrics").output
            func value(_ series: String) -> Double? {
                text.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.split(separator: " ").last!) }
            }
            #expect(value("harp_frp_clients_online") == 1)
            #expect(value("harp_frp_proxies") == 1)
            #expect(value(#"harp_frp_work_connections{state="pooled"}"#) ?? 0 >= 1)
            #expect(value(#"harp_frp_bytes_total{direction="to_client"}"#) == Double(1 << 20))
            #expect(value(#"harp_frp_bytes_total{direction="to_user"}"#) == Double(1 << 20))
            #expect(value(#"harp_frp_logins_refused_total{reason="shared_key"}"#) == 1)
        }
    }

    @Test("a wrong shared key or a wrong token is refused, and the client shows the reason", arguments: clients)
    func refusedLogins(client kind: FRPClient.Kind) throws {
        try Self.run(kind, harp: { Self.harpConfig(port: $0, allow: "\($1)") },
                     frpc: { Self.frpcConfig(serverPort: $0, localPort: $1, remotePort: $2, metaToken: "wrong") }) { harp, client, _, _ in
            #expect(client.waitForExit() != 0)
            #expect(client.log.contains("invalid shared key"), "\(client.log.suffix(400))")
            #expect(throws: Never.self) { try harp.waitForOutput("frp login refused", timeout: 5) }
        }
        try Self.run(kind, harp: { Self.harpConfig(port: $0, token: "right", allow: "\($1)") },
                     frpc: { Self.frpcConfig(serverPort: $0, localPort: $1, remotePort: $2, token: "wrong") }) { _, client, _, _ in
            #expect(client.waitForExit() != 0)
            #expect(client.log.contains("token in login doesn't match token from configuration"), "\(client.log.suffix(400))")
        }
    }

    @Test("a port outside allow_ports is refused with frp's message; the client stays logged in", arguments: clients)
    func portNotAllowed(client kind: FRPClient.Kind) throws {
        try Self.run(kind, harp: { port, remote in Self.harpConfig(port: port, allow: "\(remote &+ 1)") },
                     frpc: { Self.frpcConfig(serverPort: $0, localPort: $1, remotePort: $2) }) { harp, client, _, remote in
            #expect(client.waitForLog("port not allowed"), "\(client.log.suffix(400))")
            #expect(throws: Never.self) { try harp.waitForOutput("frp proxy refused", timeout: 5) }
            #expect(harp.stderr.split(separator: "\n").first { $0.contains("frp proxy refused") }?.contains(" warning ") == true)
            #expect(!isListening(pid: harp.pid, port: remote))
        }
    }

    @Test("the client killed: its port is released at once and a restarted client binds it again", arguments: clients)
    func restart(client kind: FRPClient.Kind) throws {
        let echo = try EchoServer()
        defer { echo.stop() }
        let port = freePort(), remote = freePort()
        let harp = try HarpProcess.serve(Self.harpConfig(port: port, allow: "\(remote)"))
        let config = Self.frpcConfig(serverPort: port, localPort: echo.address.port!, remotePort: remote)
        let first = try FRPClient(config: config, kind: kind)
        guard Self.served(remote, first) else { return }
        #expect(Self.echoes(through: remote))
        first.kill()
        let second = try FRPClient(config: config, kind: kind)
        defer { second.kill() }
        #expect(second.waitForLog("start proxy success"), "\(second.log.suffix(600))")
        #expect(Self.echoes(through: remote))
        #expect(try harp.stop() == 0)
    }

    @Test("garbage, an oversize frame and a silent client each lose only their own connection")
    func hostileNeighbours() throws {
        try Self.run(.frpc, harp: { Self.harpConfig(port: $0, allow: "\($1)") },
                     frpc: { Self.frpcConfig(serverPort: $0, localPort: $1, remotePort: $2, mux: false) }) { harp, client, frpPort, remote in
            guard Self.served(remote, client) else { return }
            let silent = try TestSocket(connectingTo: loopback(frpPort), timeoutSeconds: 20)
            // A port probe: connects and closes at once. Not worth an info line.
            for _ in 0..<3 { _ = try TestSocket(connectingTo: loopback(frpPort), timeoutSeconds: 5) }
            let garbage = try TestSocket(connectingTo: loopback(frpPort), timeoutSeconds: 5)
            try garbage.send(Array("GET / HTTP/1.1\r\n\r\n".utf8))
            #expect(try garbage.receiveAll().isEmpty, "closed")
            let oversize = try TestSocket(connectingTo: loopback(frpPort), timeoutSeconds: 5)
            try oversize.send([UInt8(ascii: "o")] + withUnsafeBytes(of: Int64(1 << 20).bigEndian, Array.init))
            #expect(try oversize.receiveAll().isEmpty, "closed")
            #expect(Self.echoes(through: remote), "the real client still works")
            #expect(throws: Never.self) { try harp.waitForOutput("message length 1048576", timeout: 5) }
            #expect(try silent.receiveAll().isEmpty, "a client that says nothing is closed after 10 s")
            #expect(throws: Never.self) { try harp.waitForOutput("nothing sent within 10 s", timeout: 5) }
            #expect(harp.occurrences(of: "nothing sent within 10 s") == 1, "only the silent client; the probes said nothing at info")
        }
    }
}

/// HaRP's FRP certificate layout: ca.crt, server.crt/key (harp.nc), client.crt/key (harp.client.nc).
func frpCertificates() throws -> TestCertificates {
    try TestCertificates(names: [("server", "DNS:harp.nc"), ("client", "DNS:harp.client.nc")], extension: "crt")
}
