import Foundation
import Glibc
@testable import HarpKernel
import HarpTestSupport
import Testing

/// yamux sessions over a socket pair on one loop: harp's client side against harp's server
/// side (the interop with upstream frpc is in the FRP tests).
@Suite("yamux sessions")
struct YamuxTests {
    @Test("header known answers: frpc's first two frames of a tcpMux connection")
    func headers() {
        // Captured from frpc 0.65: window update + SYN on stream 1 with delta 6 MiB - 256 KiB,
        // then a 190-byte data frame.
        let syn: [UInt8] = [0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x5C, 0x00, 0x00]
        let data: [UInt8] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0xBE]
        let decoder = YamuxHeaderDecoder()
        guard case .frame(let first, 12, 0) = syn.withUnsafeBytes({ decoder.decode($0) }),
              case .frame(let second, 12, 190) = data.withUnsafeBytes({ decoder.decode($0) }) else {
            Issue.record("not decoded")
            return
        }
        #expect(first == YamuxHeader(.windowUpdate, flags: .syn, streamID: 1, length: 6_029_312))
        #expect(second == YamuxHeader(.data, streamID: 1, length: 190))
        #expect(first.bytes == syn && second.bytes == data)
        let badVersion: [UInt8] = [0x01] + syn.dropFirst()
        if case .invalid(.version(1)) = badVersion.withUnsafeBytes({ decoder.decode($0) }) {} else { Issue.record("version 1 accepted") }
        let badFlags: [UInt8] = Array(syn.prefix(2)) + [0x00, 0x10] + syn.dropFirst(4)
        if case .invalid(.flags(0x10)) = badFlags.withUnsafeBytes({ decoder.decode($0) }) {} else { Issue.record("flag 0x10 accepted") }
        let short = Array(syn.prefix(11))
        if case .needMore = short.withUnsafeBytes({ decoder.decode($0) }) {} else { Issue.record("11 bytes decided") }
    }

    @Test("a seeded fuzz of the header decoder never crashes and never accepts a bad version or type")
    func fuzz() {
        var generator = SeededGenerator(seed: 0x9A7C_11E5)
        let decoder = YamuxHeaderDecoder()
        for _ in 0..<20_000 {
            let count = Int.random(in: 0...16, using: &generator)
            let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if case .frame(let header, _, _) = bytes.withUnsafeBytes({ decoder.decode($0) }) {
                #expect(bytes[0] == 0 && bytes[1] <= 3 && header.flags.rawValue <= 0x0F, "seed 0x9A7C11E5: \(bytes)")
            }
        }
    }

    /// A client and a server session over a socket pair; `body` runs on the loop.
    static func withSessions<T: Sendable>(serverSettings: YamuxSession.Settings = .init(),
                                          _ body: @escaping @Sendable (YamuxSession, YamuxSession) async -> T) async throws -> T {
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        let (a, b) = socketPair()
        return await loop.spawn { () -> T in
            let client = YamuxSession(transport: SocketStream(loop: loop, fd: a), isClient: true)
            let server = YamuxSession(transport: SocketStream(loop: loop, fd: b), isClient: false, settings: serverSettings)
            let readers = [loop.spawn { await client.run() }, loop.spawn { await server.run() }]
            let result = await body(client, server)
            await client.close()
            await server.close()
            for reader in readers { await reader.value }
            return result
        }.value
    }

    /// Writes `payload` on `stream` and FIN (from another task), reads the echo back in reads
    /// of at most `readingAtMost` bytes, then expects FIN: "ok", or what went wrong.
    /// `size` seeded pseudo-random bytes (the caller deallocates them): a shifted or
    /// repeated piece never compares equal by accident.
    static func randomPayload(_ size: Int) -> UnsafeMutableRawBufferPointer {
        let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        var state: UInt64 = 0x5EED_0F_7A11
        for i in 0..<size {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            payload[i] = UInt8(truncatingIfNeeded: state >> 33)
        }
        return payload
    }

    static func echoed(_ payload: SharedBytes, through stream: YamuxStream, readingAtMost readSize: Int) async -> String {
        let size = payload.pointer.count
        let writer = stream.loop.spawn { () -> Int32 in
            let sent = await stream.write(payload.pointer, timeout: .seconds(10))
            await stream.finishWriting()
            return sent
        }
        let received = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        defer { received.deallocate() }
        var total = 0
        while total < size {
            let want = min(readSize, size - total)
            let got = await stream.read(into: UnsafeMutableRawBufferPointer(rebasing: received[total..<total + want]), timeout: .seconds(10))
            if got <= 0 { return "ended after \(total): \(got)" }
            total += got
        }
        let end = await stream.read(into: UnsafeMutableRawBufferPointer(rebasing: received[0..<1]), timeout: .seconds(10))
        guard await writer.value == 0 else { return "write failed" }
        guard memcmp(received.baseAddress!, payload.pointer.baseAddress!, size) == 0 else {
            let first = (0..<size).first { received[$0] != payload.pointer[$0] } ?? -1
            return "payload differs from byte \(first)"
        }
        return end == 0 ? "ok" : "no FIN: \(end)"
    }

    @Test("16 MiB each way on three streams at once arrive intact (window updates keep them moving)")
    func bulkBothWays() async throws {
        let outcome = try await Self.withSessions { client, server in
            let size = 16 << 20
            let payload = Self.randomPayload(size)
            defer { payload.deallocate() }
            let shared = SharedBytes(pointer: UnsafeRawBufferPointer(payload))
            let loop = client.loop
            // Server: echo every accepted stream until its FIN.
            let echo = loop.spawn {
                await withTaskGroup(of: Void.self) { group in
                    for _ in 0..<3 {
                        guard let stream = await server.accept() else { return }
                        group.addTask {
                            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 100_000, alignment: 16)
                            defer { buffer.deallocate() }
                            while true {
                                let got = await stream.read(into: buffer, timeout: .seconds(10))
                                if got <= 0 { break }
                                _ = await stream.write(UnsafeRawBufferPointer(rebasing: buffer[0..<got]), timeout: .seconds(10))
                            }
                            await stream.close()
                        }
                    }
                }
            }
            var results: [String] = []
            await withTaskGroup(of: String.self) { group in
                for _ in 0..<3 {
                    group.addTask {
                        guard let stream = await client.open() else { return "no stream" }
                        return await Self.echoed(shared, through: stream, readingAtMost: size)
                    }
                }
                for await result in group { results.append(result) }
            }
            await echo.value
            return results.sorted()
        }
        #expect(outcome == ["ok", "ok", "ok"])
    }

    @Test("a relay between a yamux stream and a socket carries 48 MiB through and back intact, read in odd sizes")
    func relayThroughStream() async throws {
        // The relay's reads take payload straight from the session (a waiting read's buffer)
        // and its writes put frame headers in the copy buffer's headroom; the far end reads
        // 3,000 bytes at a time, so most deliveries land in the stream's buffer instead.
        let outcome = try await Self.withSessions { client, server in
            let size = 48 << 20
            let payload = Self.randomPayload(size)
            defer { payload.deallocate() }
            let shared = SharedBytes(pointer: UnsafeRawBufferPointer(payload))
            let loop = client.loop
            let (near, far) = socketPair()
            loopSide(near)
            // Server: relay the accepted stream to a socket whose other end echoes.
            let relay = loop.spawn { () -> RelayResult? in
                guard let stream = await server.accept() else { return nil }
                return await loop.relay(stream, SocketStream(loop: loop, fd: near), idleTimeout: .seconds(10))
            }
            let echo = loop.spawn {
                let socket = SocketStream(loop: loop, fd: far)
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 70_001, alignment: 16)
                defer { buffer.deallocate() }
                while true {
                    let got = await socket.read(into: buffer, timeout: .seconds(10))
                    if got <= 0 { break }
                    guard await socket.write(UnsafeRawBufferPointer(rebasing: buffer[0..<got]), timeout: .seconds(10)) == 0 else { break }
                }
                await socket.close()
            }
            guard let stream = await client.open() else { return "no stream" }
            let echoed = await Self.echoed(shared, through: stream, readingAtMost: 3_000)
            let relayed = await relay.value
            await echo.value
            guard let relayed, relayed.forwardBytes == size, relayed.backwardBytes == size else { return "relay counted \(String(describing: relayed))" }
            return echoed
        }
        #expect(outcome == "ok")
    }

    @Test("data beyond the window is a protocol error: the session ends with go-away 1, streams are reset")
    func windowViolation() async throws {
        let outcome = try await Self.withSessions { client, server in
            guard let stream = await client.open() else { return "no stream" }
            guard let accepted = await server.accept() else { return "not accepted" }
            // Send 256 KiB + 1 without any grant: harp's own write path never does this, so
            // write the frame by hand through the session.
            let oversize = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(YamuxSession.initialWindow) + 1, alignment: 16)
            defer { oversize.deallocate() }
            // The server's ACK grants nothing past the initial 256 KiB until it reads: a frame
            // past the window breaks the rule.
            _ = await client.sendData(stream.id, flags: [], UnsafeRawBufferPointer(rebasing: oversize[0..<262_144]), inPlace: false, timeout: .seconds(5))
            _ = await client.sendData(stream.id, flags: [], UnsafeRawBufferPointer(rebasing: oversize[0..<1]), inPlace: false, timeout: .seconds(5))
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 16)
            defer { buffer.deallocate() }
            // The client's stream sees the reset once the server's go-away ends its session.
            while await stream.read(into: buffer, timeout: .seconds(5)) > 0 {}
            _ = accepted
            return server.endReason ?? "server still running"
        }
        #expect(outcome.hasPrefix("stream 1 sent 1 bytes with a window of 0"), "\(outcome)")
    }

    @Test("a flood of streams past the backlog is reset; the session and the accepted streams go on")
    func streamFlood() async throws {
        var settings = YamuxSession.Settings()
        settings.acceptBacklog = 4
        let outcome = try await Self.withSessions(serverSettings: settings) { client, server in
            var opened: [YamuxStream] = []
            for _ in 0..<10 { if let stream = await client.open() { opened.append(stream) } }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 16)
            defer { buffer.deallocate() }
            // Streams 5-10 were refused with RST: their reads fail at once.
            let refused = await opened[9].read(into: buffer, timeout: .seconds(5))
            var accepted = 0
            for _ in 0..<4 { if await server.accept() != nil { accepted += 1 } }
            return "\(accepted) \(refused == -Int(ECONNRESET)) \(server.endReason ?? "running")"
        }
        #expect(outcome == "4 true running")
    }
}

