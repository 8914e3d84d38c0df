import Foundation
import Glibc
import HarpKernel
import HarpTestSupport
import Testing

/// The websocket plugin through the real binary, with Python `websockets` as client and
/// server, and raw frames for what a well-behaved library will not send.
@Suite("websocket plugin through the harp binary", .serialized)
struct WebSocketTests {
    static let peerScript = WebSocketPeer.script
    typealias EchoServer = WebSocketPeer.EchoServer

    static func config(port: UInt16, upstream: UInt16, http: String = "", websocket: String = "max_message_size = 1048576") -> String {
        """
        [harp]
        threads = 2
        shutdown_grace = "1s"
        [http]
        listen = ["127.0.0.1:\(port)"]
        \(http)
        [[http.routes]]
        path_prefix = "/"
        upstream = "http://127.0.0.1:\(upstream)"
        [websocket]
        \(websocket)
        [[websocket.inspect]]
        path_prefix = "/inspect/"
        """
    }

    static func peer(_ arguments: String) throws -> String {
        try shell("timeout 120 python3 \(peerScript) \(arguments) 2>&1").output
    }

    @Test("echo of 10,000 messages (spliced) and 2,000 (inspected); one 64 MiB message; 200 concurrent connections")
    func traffic() throws {
        let server = try EchoServer()
        let port = freePort()
        let harp = try HarpProcess.serve(Self.config(port: port, upstream: server.port, websocket: "max_message_size = 104857600"))
        #expect(try Self.peer("echo ws://127.0.0.1:\(port)/chat 10000") == "ok 10000")
        #expect(try Self.peer("echo ws://127.0.0.1:\(port)/inspect/chat 2000") == "ok 2000")
        #expect(try Self.peer("big ws://127.0.0.1:\(port)/big 67108864") == "ok 67108864")
        #expect(try Self.peer("big ws://127.0.0.1:\(port)/inspect/big 67108864") == "ok 67108864")
        #expect(try Self.peer("concurrent ws://127.0.0.1:\(port)/many 200 20") == "ok 200")
        // permessage-deflate passes through both modes (compressed frames carry RSV1).
        #expect(try Self.peer("echo ws://127.0.0.1:\(port)/deflate 500 deflate") == "ok 500")
        #expect(try Self.peer("echo ws://127.0.0.1:\(port)/inspect/deflate 500 deflate") == "ok 500")
        #expect(try harp.stop() == 0)
    }

    @Test("an idle WebSocket outlives the client timeout and is closed after the tunnel timeout")
    func idleLimits() throws {
        let server = try EchoServer()
        let port = freePort()
        let harp = try HarpProcess.serve(Self.config(port: port, upstream: server.port,
                                                     http: "client_timeout = \"1s\"\ntunnel_timeout = \"6s\""))
        #expect(try Self.peer("idle ws://127.0.0.1:\(port)/idle 2.5") == "ok idle")
        #expect(try harp.stop() == 0)
        let strict = try HarpProcess.serve(Self.config(port: port, upstream: server.port,
                                                       http: "client_timeout = \"1s\"\ntunnel_timeout = \"1s\""))
        #expect(try Self.peer("idle ws://127.0.0.1:\(port)/idle 2.5") == "closed 1006", "cut (no close frame) after the tunnel timeout")
        #expect(try strict.stop() == 0)
    }

    @Test("bad handshakes get 400, a wrong version 426 with Sec-WebSocket-Version: 13")
    func badHandshakes() throws {
        let server = try EchoServer()
        let port = freePort()
        let harp = try HarpProcess.serve(Self.config(port: port, upstream: server.port))
        let base = "curl -s -o /dev/null -w '%{http_code}' -H 'Upgrade: websocket' -H 'Connection: Upgrade'"
        let key = "-H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=='"
        #expect(try shell("\(base) \(key) -H 'Sec-WebSocket-Version: 13' -X POST http://127.0.0.1:\(port)/").output == "400")
        #expect(try shell("\(base) -H 'Sec-WebSocket-Version: 13' http://127.0.0.1:\(port)/").output == "400")
        #expect(try shell("\(base) -H 'Sec-WebSocket-Key: c2hvcnQ=' -H 'Sec-WebSocket-Version: 13' http://127.0.0.1:\(port)/").output == "400")
        #expect(try shell("curl -s -o /dev/null -w '%{http_code}' -H 'Upgrade: websocket' \(key) -H 'Sec-WebSocket-Version: 13' http://127.0.0.1:\(port)/").output == "400")
        let wrong = try shell("curl -s -i \(base.replacingOccurrences(of: "-o /dev/null -w '%{http_code}'", with: "")) \(key) -H 'Sec-WebSocket-Version: 8' http://127.0.0.1:\(port)/").output
        #expect(wrong.hasPrefix("HTTP/1.1 426"), "\(wrong)")
        #expect(wrong.contains("Sec-WebSocket-Version: 13"))
        #expect(try harp.stop() == 0)
    }

    /// A raw client: handshake, then frames written by hand.
    final class RawClient {
        let socket: TestSocket
        init(port: UInt16, path: String) throws {
            socket = try TestSocket(connectingTo: loopback(port), timeoutSeconds: 10)
            try socket.send(Array(("GET \(path) HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").utf8))
            let head = try socket.receiveUntil("\r\n\r\n")
            guard head.hasPrefix("HTTP/1.1 101") else { throw TestFailure("no 101: \(head)") }
        }

        static func frame(opcode: UInt8, _ payload: [UInt8], masked: Bool = true, fin: Bool = true, claimedLength: Int? = nil) -> [UInt8] {
            var out: [UInt8] = [(fin ? 0x80 : 0) | opcode]
            let length = claimedLength ?? payload.count
            let maskBit: UInt8 = masked ? 0x80 : 0
            if length < 126 {
                out.append(maskBit | UInt8(length))
            } else if length < 65536 {
                out += [maskBit | 126, UInt8(length >> 8), UInt8(length & 0xFF)]
            } else {
                out.append(maskBit | 127)
                for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8((length >> shift) & 0xFF)) }
            }
            guard masked else { return out + payload }
            let key: [UInt8] = [1, 2, 3, 4]
            return out + key + payload.enumerated().map { $0.element ^ key[$0.offset & 3] }
        }

        /// Reads frames until a close frame arrives; returns its code (nil if the connection
        /// ended without one). Pings seen on the way are counted.
        func closeCode(pings: inout Int) -> UInt16? {
            var data: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                while data.count >= 2 {
                    let length = Int(data[1] & 0x7F)
                    guard length < 126, data.count >= 2 + length else { break }
                    let opcode = data[0] & 0x0F
                    if opcode == 0x8 { return length >= 2 ? UInt16(data[2]) << 8 | UInt16(data[3]) : 0 }
                    if opcode == 0x9 { pings += 1 }
                    data.removeFirst(2 + length)
                }
                let count = socket.receiveOnce(into: &buffer)
                guard count > 0 else { return nil }
                data += buffer[0..<count]
            }
        }

        func closeCode() -> UInt16? {
            var pings = 0
            return closeCode(pings: &pings)
        }
    }

    @Test("inspect mode closes with 1002 for an unmasked frame, 1007 for bad UTF-8, 1009 for an oversize message; other tunnels go on")
    func inspectViolations() throws {
        let server = try EchoServer()
        let port = freePort()
        let harp = try HarpProcess.serve(Self.config(port: port, upstream: server.port))
        let bystander = try RawClient(port: port, path: "/inspect/bystander")

        let unmasked = try RawClient(port: port, path: "/inspect/a")
        try unmasked.socket.send(RawClient.frame(opcode: 0x1, Array("hi".utf8), masked: false))
        #expect(unmasked.closeCode() == 1002)

        let badText = try RawClient(port: port, path: "/inspect/b")
        try badText.socket.send(RawClient.frame(opcode: 0x1, [0x68, 0xC3, 0x28]))
        #expect(badText.closeCode() == 1007)

        let split = try RawClient(port: port, path: "/inspect/c")
        try split.socket.send(RawClient.frame(opcode: 0x1, [0x68, 0xE2, 0x82], fin: false) + RawClient.frame(opcode: 0x0, [0x41]))
        #expect(split.closeCode() == 1007, "a code point broken across fragments")

        let oversize = try RawClient(port: port, path: "/inspect/d")
        try oversize.socket.send(Array(RawClient.frame(opcode: 0x2, [], claimedLength: 2 << 20).prefix(14)))
        #expect(oversize.closeCode() == 1009)

        let badClose = try RawClient(port: port, path: "/inspect/e")
        try badClose.socket.send(RawClient.frame(opcode: 0x8, [0x03, 0xED]))  // 1005 may not be sent
        #expect(badClose.closeCode() == 1002)

        let longPing = try RawClient(port: port, path: "/inspect/f")
        try longPing.socket.send(RawClient.frame(opcode: 0x9, [UInt8](repeating: 0, count: 200)))
        #expect(longPing.closeCode() == 1002)

        // The bystander's tunnel still echoes (the Python server answers unmasked frames).
        try bystander.socket.send(RawClient.frame(opcode: 0x1, Array("still fine".utf8)))
        let reply = try bystander.socket.receive(exactly: 12)
        #expect(Array(reply[2...]) == Array("still fine".utf8))
        #expect(try Self.peer("echo ws://127.0.0.1:\(port)/inspect/after 10") == "ok 10")
        #expect(try harp.stop() == 0)
    }

    @Test("inspect mode pings a quiet client")
    func pings() throws {
        let server = try EchoServer()
        let port = freePort()
        let harp = try HarpProcess.serve(Self.config(port: port, upstream: server.port, websocket: "ping_interval = \"200ms\"\nmax_message_size = 1048576"))
        let client = try RawClient(port: port, path: "/inspect/quiet")
        Thread.sleep(forTimeInterval: 1)
        try client.socket.send(RawClient.frame(opcode: 0x8, [0x03, 0xE8]))  // close 1000
        var pings = 0
        #expect(client.closeCode(pings: &pings) == 1000, "the server's close reply comes through")
        #expect(pings >= 2, "got \(pings) pings")
        #expect(try harp.stop() == 0)
    }
}
