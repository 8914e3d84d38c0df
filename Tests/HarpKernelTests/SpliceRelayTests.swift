import Foundation
import Glibc
@testable import HarpKernel
import HarpTestSupport
import Testing

@Suite("splice relay")
struct SpliceRelayTests {
    /// A relay between the inner ends of two socket pairs; the test holds the outer ends.
    static func withRelay(idle: Duration = .seconds(30), halfClosed: Duration? = nil,
                          _ body: @escaping @Sendable (Int32, Int32) throws -> Void) async throws -> RelayResult {
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        let (outerA, innerA) = socketPair()
        let (outerB, innerB) = socketPair()
        loopSide(innerA); loopSide(innerB)
        // The relay closes nothing itself; the task that awaited it closes the inner ends,
        // which is what the blocking peer (on its own thread, not the cooperative pool) sees.
        let relay = loop.spawn { () -> RelayResult in
            let result = await loop.relay(innerA, innerB, idleTimeout: idle, halfClosedTimeout: halfClosed)
            close(innerA); close(innerB)
            return result
        }
        let peerError: (any Error)? = await withCheckedContinuation { continuation in
            Thread {
                defer { close(outerA); close(outerB) }
                do { try body(outerA, outerB); continuation.resume(returning: nil) } catch { continuation.resume(returning: error) }
            }.start()
        }
        if let peerError { throw peerError }
        return await relay.value
    }

    @Test("bytes flow both ways and FIN is passed on per direction")
    func bothWaysWithHalfClose() async throws {
        let result = try await Self.withRelay { a, b in
            let request = [UInt8](repeating: 1, count: 300_000)
            let reply = [UInt8](repeating: 2, count: 200_000)
            let writer = Thread { _ = request.withUnsafeBytes { sendAll(a, $0) }; shutdown(a, Int32(SHUT_WR)) }
            writer.start()
            let got = readAll(b)
            guard got == request else { throw TestFailure("request mismatch: \(got.count) bytes") }
            // a has half-closed; b can still answer.
            _ = reply.withUnsafeBytes { sendAll(b, $0) }
            shutdown(b, Int32(SHUT_WR))
            let back = readAll(a)
            guard back == reply else { throw TestFailure("reply mismatch: \(back.count) bytes") }
        }
        #expect(result.outcome == .finished)
        #expect(result.forwardBytes == 300_000)
        #expect(result.backwardBytes == 200_000)
    }

    @Test("a bounded transfer that ends on a turn's last round finishes at once (regression: it waited for the idle timeout)")
    func transferEndsOnTurnBoundary() async throws {
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        let (source, sourcePeer) = socketPair()
        let (destination, destinationPeer) = socketPair()
        loopSide(source); loopSide(destination)
        defer { [source, sourcePeer, destination, destinationPeer].forEach { close($0) } }
        let payload = [UInt8](repeating: 9, count: 1000)
        _ = payload.withUnsafeBytes { sendAll(sourcePeer, $0) }
        // One round per turn: every turn ends right after the pipe was emptied. Before the fix
        // the relay then waited on the source and ended by the idle timer (.idleTimeout).
        let result = await loop.spawn {
            await SpliceRelay(loop: loop, source, destination, limit: 1000, idleTimeout: .seconds(10),
                              halfClosedTimeout: nil, roundsPerTurn: 1).run()
        }.value
        #expect(result.outcome == .finished)
        #expect(result.forwardBytes == 1000)
    }

    @Test("an idle relay ends with idleTimeout")
    func idleEnds() async throws {
        let started = ContinuousClock.now
        let result = try await Self.withRelay(idle: .milliseconds(200)) { a, b in
            var buffer = [UInt8](repeating: 0, count: 8)
            _ = recv(a, &buffer, 8, 0)  // returns when the relay closes
        }
        #expect(result.outcome == .idleTimeout)
        #expect(ContinuousClock.now - started >= .milliseconds(190))
    }

    @Test("a half-closed relay is reaped after halfClosedTimeout")
    func halfClosedReaped() async throws {
        let result = try await Self.withRelay(idle: .seconds(30), halfClosed: .milliseconds(200)) { a, b in
            shutdown(a, Int32(SHUT_WR))
            var buffer = [UInt8](repeating: 0, count: 8)
            _ = recv(b, &buffer, 8, 0)  // EOF passed on
            _ = recv(a, &buffer, 8, 0)  // returns when the relay gives up
        }
        #expect(result.outcome == .idleTimeout)
    }

    @Test("a reset on one side ends the relay with that side's error")
    func resetEnds() async throws {
        let result = try await Self.withRelay { a, b in
            let junk = [UInt8](repeating: 7, count: 100)
            _ = junk.withUnsafeBytes { sendAll(a, $0) }
            var buffer = [UInt8](repeating: 0, count: 100)
            _ = recv(b, &buffer, 100, Int32(MSG_WAITALL))
            shutdown(b, Int32(SHUT_RDWR))  // a write towards b now fails
            _ = junk.withUnsafeBytes { sendAll(a, $0) }
            _ = recv(a, &buffer, 8, 0)
        }
        // b can no longer receive: the next splice towards it fails with EPIPE (side 1 is b's).
        #expect(result.outcome == .failed(side: 1, errno: EPIPE))
        #expect(result.forwardBytes == 100)
    }
}

func sendAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    var offset = 0
    while offset < bytes.count {
        let sent = send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
        if sent <= 0 { return false }
        offset += sent
    }
    return true
}

func readAll(_ fd: Int32) -> [UInt8] {
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = recv(fd, &buffer, buffer.count, 0)
        if count <= 0 { return out }
        out.append(contentsOf: buffer[0..<count])
    }
}
