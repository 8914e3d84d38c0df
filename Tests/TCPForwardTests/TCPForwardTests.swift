import Foundation
import Glibc
import HarpKernel
import HarpTestSupport
import Synchronization
import Testing

/// `tcp.forward` through the real binary, with independent blocking-socket peers.
@Suite("tcp.forward through the harp binary", .serialized)
struct TCPForwardTests {
    static func config(listen: UInt16, upstream: SocketAddress, threads: Int = 2, extra: String = "") -> String {
        """
        [harp]
        threads = \(threads)
        shutdown_grace = "3s"
        log_level = "debug"

        [[tcp.forward]]
        listen = "127.0.0.1:\(listen)"
        upstream = "\(upstream)"
        \(extra)
        """
    }

    @Test("1 GiB through tcp.forward arrives intact (SHA-256 at both ends)")
    func oneGibibyteIntact() throws {
        let sink = try HashingSink()
        defer { sink.stop() }
        let port = freePort()
        let harp = try HarpProcess.serve(Self.config(listen: port, upstream: sink.address))
        let client = try TestSocket(connectingTo: loopback(port))
        // An odd block size so that block edges never line up with pipe or socket buffers.
        var generator = SystemRandomNumberGenerator()
        let block = (0..<(1_048_576 + 4099)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let total = 1 << 30
        let hash = SHA256()
        var sent = 0
        try block.withUnsafeBytes { raw in
            while sent < total {
                let slice = UnsafeRawBufferPointer(rebasing: raw[0..<min(raw.count, total - sent)])
                try client.send(slice)
                hash.update(slice)
                sent += slice.count
            }
        }
        client.shutdownWrite()
        let reply = String(decoding: try client.receiveAll(), as: UTF8.self)
        #expect(reply == "\(hash.finalizeHex()) \(total)\n")
        #expect(try harp.stop() == 0)
    }

    @Test("1,000 concurrent connections each echo their own random payload")
    func thousandConcurrentEchoes() throws {
        raiseFileLimit()
        let echo = try EchoServer()
        defer { echo.stop() }
        let port = freePort()
        let harp = try HarpProcess.serve(Self.config(listen: port, upstream: echo.address))
        let count = 1000
        var sockets: [TestSocket] = []
        var payloads: [[UInt8]] = []
        for index in 0..<count {
            sockets.append(try TestSocket(connectingTo: loopback(port)))
            payloads.append((0..<(100 + index * 7)).map { _ in UInt8.random(in: 0...255) })
        }
        for index in 0..<count { try sockets[index].send(payloads[index]) }
        for index in 0..<count {
            let echoed = try sockets[index].receive(exactly: payloads[index].count)
            #expect(echoed == payloads[index], "connection \(index)")
        }
        for index in 0..<count { sockets[index].shutdownWrite() }
        for index in 0..<count {
            #expect(try sockets[index].receiveAll().isEmpty, "EOF after echo on \(index)")
        }
        #expect(echo.accepted == count)
        #expect(try harp.stop() == 0)
    }

    @Test("upstream refused: the client is closed promptly and the event is logged")
    func upstreamRefused() throws {
        let port = freePort()
        let refusing = try RefusingPort()
        let deadPort = refusing.port
        let harp = try HarpProcess.serve(Self.config(listen: port, upstream: loopback(deadPort)))
        let started = Date()
        let client = try TestSocket(connectingTo: loopback(port), timeoutSeconds: 10)
        #expect(try client.receiveAll().isEmpty)
        #expect(Date().timeIntervalSince(started) < 5)
        try harp.waitForOutput("upstream unreachable; closing client")
        #expect(harp.stderr.contains("Connection refused"))
        #expect(try harp.stop() == 0)
    }

    @Test("an unreachable upstream times out after connect_timeout instead of hanging")
    func upstreamConnectTimeout() throws {
        let port = freePort()
        // A listener with a full backlog never completes new handshakes: connects hang.
        let blackhole = try Socket.listen(on: loopback(0), reusePort: false, backlog: 0)
        defer { close(blackhole) }
        let target = SocketAddress.local(of: blackhole)!
        var fillers: [TestSocket] = []
        for _ in 0..<8 { if let s = try? TestSocket(connectingTo: target, timeoutSeconds: 1) { fillers.append(s) } }
        let harp = try HarpProcess.serve(Self.config(listen: port, upstream: target,
                                                     extra: "connect_timeout = \"300ms\""))
        let started = Date()
        let client = try TestSocket(connectingTo: loopback(port), timeoutSeconds: 10)
        _ = try? client.receiveAll()
        #expect(Date().timeIntervalSince(started) < 5)
        try harp.waitForOutput("upstream unreachable")
        #expect(try harp.stop() == 0)
        _ = fillers
    }

    @Test("Unix-socket upstream")
    func unixUpstream() throws {
        let path = NSTemporaryDirectory() + "harp-echo-\(getpid()).sock"
        let echo = try EchoServer(unixPath: path)
        defer { echo.stop(); unlink(path) }
        let port = freePort()
        let harp = try HarpProcess.serve(Self.config(listen: port, upstream: .unix(path: path)))
        let client = try TestSocket(connectingTo: loopback(port))
        let payload = Array("hello over a unix socket".utf8)
        try client.send(payload)
        client.shutdownWrite()
        #expect(try client.receiveAll() == payload)
        #expect(try harp.stop() == 0)
    }

    @Test("half-close: the client's FIN reaches the upstream and the reply still comes back")
    func halfClose() throws {
        let sink = try HashingSink()
        defer { sink.stop() }
        let port = freePort()
        let harp = try HarpProcess.serve(Self.config(listen: port, upstream: sink.address))
        let client = try TestSocket(connectingTo: loopback(port))
        let payload = Array("abc".utf8)
        try client.send(payload)
        client.shutdownWrite()
        let reply = String(decoding: try client.receiveAll(), as: UTF8.self)
        #expect(reply == "\(SHA256.hexDigest(of: payload)) 3\n")
        #expect(try harp.stop() == 0)
    }

    @Test("clients disconnecting mid-transfer leave no descriptor behind")
    func disconnectMidTransferLeaksNothing() throws {
        let source = try StreamingSource()
        defer { source.stop() }
        let port = freePort()
        let harp = try HarpProcess.serve(Self.config(listen: port, upstream: source.address, threads: 1))
        let before = harp.openSocketCount
        for round in 0..<50 {
            let client = try TestSocket(connectingTo: loopback(port))
            var buffer = [UInt8](repeating: 0, count: 65536)
            var received = 0
            while received < 1 << 20 {
                let count = client.receiveOnce(into: &buffer)
                guard count > 0 else { break }
                received += count
            }
            #expect(received >= 1 << 20, "round \(round)")
            if round % 2 == 0 { client.abortOnClose() }  // half the clients RST, half FIN
        }
        // Relays notice the disconnect when their next splice fails.
        var after = harp.openSocketCount
        for _ in 0..<100 where after > before {
            usleep(50_000)
            after = harp.openSocketCount
        }
        #expect(after == before, "open sockets before \(before), after \(after)")
        #expect(harp.openFileCount < 600, "pipes are pooled up to a bound")
        #expect(try harp.stop() == 0)
    }

    @Test("SIGTERM: new connections are refused, open relays finish within the grace period, exit 0")
    func gracefulShutdown() throws {
        let echo = try EchoServer()
        defer { echo.stop() }
        let port = freePort()
        let harp = try HarpProcess.serve(Self.config(listen: port, upstream: echo.address))
        let open = try TestSocket(connectingTo: loopback(port))
        try open.send(Array("before".utf8))
        #expect(try open.receive(exactly: 6) == Array("before".utf8))
        kill(harp.pid, SIGTERM)
        try harp.waitForOutput("stopping")
        usleep(200_000)
        // The open relay still works during the grace period.
        try open.send(Array("during".utf8))
        #expect(try open.receive(exactly: 6) == Array("during".utf8))
        // New connections are refused.
        #expect(throws: (any Error).self) { _ = try TestSocket(connectingTo: loopback(port), timeoutSeconds: 2) }
        open.shutdownWrite()
        _ = try open.receiveAll()
        #expect(try harp.waitForExit() == 0)
    }

    @Test("SIGTERM with a connection still open: harp exits 0 once the grace period is over")
    func graceExpires() throws {
        let echo = try EchoServer()
        defer { echo.stop() }
        let port = freePort()
        let harp = try HarpProcess.serve(Self.config(listen: port, upstream: echo.address)
            .replacingOccurrences(of: "shutdown_grace = \"3s\"", with: "shutdown_grace = \"500ms\""))
        let open = try TestSocket(connectingTo: loopback(port))
        try open.send(Array("ping".utf8))
        #expect(try open.receive(exactly: 4) == Array("ping".utf8))
        let started = Date()
        #expect(try harp.stop(signal: SIGINT) == 0)
        let waited = Date().timeIntervalSince(started)
        #expect(waited >= 0.4 && waited < 5, "exited after \(waited)s")
        #expect(harp.stderr.contains("grace period over: closing 1 open connection(s)"))
        #expect(try open.receiveAll().isEmpty, "the connection is closed when harp exits")
    }

    @Test("an idle relay is closed after idle_timeout")
    func idleTimeout() throws {
        let echo = try EchoServer()
        defer { echo.stop() }
        let port = freePort()
        let harp = try HarpProcess.serve(Self.config(listen: port, upstream: echo.address, extra: "idle_timeout = \"400ms\""))
        let client = try TestSocket(connectingTo: loopback(port))
        try client.send(Array("x".utf8))
        #expect(try client.receive(exactly: 1) == Array("x".utf8))
        let started = Date()
        #expect(try client.receiveAll().isEmpty)
        let waited = Date().timeIntervalSince(started)
        #expect(waited > 0.3 && waited < 5, "closed after \(waited)s")
        #expect(try harp.stop() == 0)
    }
}
