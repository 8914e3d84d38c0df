import Foundation
import Glibc
@testable import HarpKernel
import HarpTestSupport
import Testing

/// `Pump`, the copy relay between two streams, driven directly: socket pairs on both sides,
/// the far ends written and read by plain blocking threads.
@Suite("pump")
struct PumpTests {
    /// Runs a copying pump between `first` and `second` on a fresh loop; returns its result
    /// and how long it ran (timed on the loop: a busy test process may be slow to hand the
    /// result back).
    static func pump(_ first: Int32, _ second: Int32, idle: Duration, halfClosed: Duration? = nil) -> Task<(RelayResult, Duration), Never> {
        let loop = try! EventLoop(index: 0)
        return Task {
            defer { loop.shutdown() }
            return await loop.spawn { () -> (RelayResult, Duration) in
                let clock = ContinuousClock(), start = clock.now
                let pump = Pump(loop: loop, SocketStream(loop: loop, fd: first), SocketStream(loop: loop, fd: second), idleTimeout: idle,
                                halfClosedTimeout: halfClosed)
                let result = await pump.run { side in await pump.copy(side) }
                let took = clock.now - start
                for stream in pump.streams { await stream.close() }
                return (result, took)
            }.value
        }
    }

    /// Runs blocking `body` on a thread of its own (never on the cooperative pool, which
    /// has two threads here) and returns what it returns.
    static func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            Thread { continuation.resume(returning: body()) }.start()
        }
    }

    /// Reads `fd` to its end.
    static func drain(_ fd: Int32) async -> [UInt8] {
        await onThread {
            var out: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = Glibc.read(fd, &buffer, buffer.count)
                if count <= 0 { return out }
                out += buffer[0..<count]
            }
        }
    }

    /// Writes all of `bytes` to `fd`, then shuts its sending side (an end of stream).
    static func send(_ bytes: [UInt8], to fd: Int32) async -> Int {
        await onThread {
            var done = 0
            bytes.withUnsafeBytes { raw in
                while done < raw.count {
                    let count = Glibc.write(fd, raw.baseAddress! + done, raw.count - done)
                    if count <= 0 { break }
                    done += count
                }
            }
            shutdown(fd, Int32(SHUT_WR))
            return done
        }
    }

    @Test("both directions arrive whole and in order; an end of stream passes on; the counts are the bytes moved")
    func bothWays() async throws {
        let (client, clientSide) = socketPair(), (serverSide, server) = socketPair()
        defer { close(client); close(server) }
        let relay = Self.pump(clientSide, serverSide, idle: .seconds(10))
        var generator = SeededGenerator(seed: 5)
        let up = (0..<3_000_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let down = (0..<700_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        async let atServer = Self.drain(server)
        async let atClient = Self.drain(client)
        async let sentUp = Self.send(up, to: client)
        async let sentDown = Self.send(down, to: server)
        let (sent, received) = await ([sentUp, sentDown], [atServer, atClient])
        #expect(sent == [up.count, down.count])
        #expect(received[0] == up, "client → server")
        #expect(received[1] == down, "server → client")
        let (result, _) = await relay.value
        #expect(result.outcome == .finished)
        #expect(result.forwardBytes == up.count && result.backwardBytes == down.count)
    }

    @Test("nothing moving either way ends it at the idle limit; one direction done, the other idle, at the half-closed limit")
    func limits() async throws {
        do {
            let (client, clientSide) = socketPair(), (serverSide, server) = socketPair()
            defer { close(client); close(server) }
            let (result, took) = await Self.pump(clientSide, serverSide, idle: .milliseconds(300)).value
            #expect(result.outcome == .idleTimeout)
            #expect(took >= .milliseconds(290) && took < .seconds(3), "\(took)")
        }
        do {
            let (client, clientSide) = socketPair(), (serverSide, server) = socketPair()
            defer { close(client); close(server) }
            shutdown(client, Int32(SHUT_WR))
            let (result, took) = await Self.pump(clientSide, serverSide, idle: .seconds(30), halfClosed: .milliseconds(300)).value
            #expect(result.outcome == .idleTimeout)
            #expect(took >= .milliseconds(290) && took < .seconds(3), "well before the 30 s idle limit: \(took)")
        }
    }

    @Test("a destination that is gone ends the pump as a failure of that side")
    func goneDestination() async throws {
        let (client, clientSide) = socketPair(), (serverSide, server) = socketPair()
        defer { close(client) }
        close(server)
        let bytes = [UInt8](repeating: 1, count: 100_000)
        _ = bytes.withUnsafeBytes { Glibc.write(client, $0.baseAddress, $0.count) }
        let (result, _) = await Self.pump(clientSide, serverSide, idle: .seconds(10)).value
        guard case .failed(let side, let code) = result.outcome else {
            Issue.record("\(result)")
            return
        }
        #expect(side == 1 && (code == EPIPE || code == ECONNRESET), "\(result)")
    }
}
