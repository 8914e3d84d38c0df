import Foundation
import Glibc
@testable import HarpKernel
import HarpTestSupport
import Testing

/// The loop's small waiting pieces, each on its own: `LoopWait` (with the `DeadlineSweep`
/// that ends its timeouts), `LoopTimer` and `WriteGate`.
@Suite("loop primitives")
struct LoopPrimitivesTests {
    /// A loop-confined object handed to other tasks on the same loop.
    final class OnLoop<T>: @unchecked Sendable {
        // @unchecked Sendable: every task that touches `value` runs on the test's one loop.
        let value: T
        init(_ value: T) { self.value = value }
    }

    @Test("LoopWait: a signal wakes the waiter at once; without one the sweep ends the wait after its timeout, not before")
    func loopWait() async throws {
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        let (signalled, timedOut, waited) = await loop.spawn { () -> (Bool, Bool, Duration) in
            let wait = LoopWait(loop: loop)
            let shared = OnLoop(wait)
            let waker = loop.spawn {
                while !shared.value.isWaiting { await Task.yield() }
                shared.value.signal()
            }
            let signalled = await wait.wait(timeout: .seconds(30))
            await waker.value
            let clock = ContinuousClock(), start = clock.now
            let timedOut = await wait.wait(timeout: .milliseconds(200))
            return (signalled, timedOut, clock.now - start)
        }.value
        #expect(signalled)
        #expect(!timedOut)
        // The sweep runs every 50 ms: the wait ends between its timeout and one sweep later.
        #expect(waited >= .milliseconds(199) && waited < .milliseconds(1000), "\(waited)")
    }

    @Test("DeadlineSweep: 100 receives with timeouts from 100 to 298 ms each end between their deadline (on the loop's coarse clock) and one sweep later; one that gets its bytes in time is not ended; with nothing watched the sweep disarms")
    func deadlineSweep() async throws {
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        var pairs: [(Int32, Int32)] = []
        for _ in 0..<101 { pairs.append(socketPair()) }
        defer { for (a, b) in pairs { close(a); close(b) } }
        let fds = pairs.map(\.0), feeder = pairs[100].1
        let (lateness, answered, idle) = await loop.spawn { () -> ([Duration], Int32, Bool) in
            final class Results: @unchecked Sendable {
                // @unchecked Sendable: written by tasks on the test's one loop.
                var lateness: [Duration] = []
                var answered: Int32 = 0
            }
            let results = Results()
            var tasks: [Task<Void, Never>] = []
            for index in 0..<100 {
                let fd = fds[index], timeout = Duration.milliseconds(100 + 2 * index)
                tasks.append(loop.spawn {
                    let record = AsyncCompletion()
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 1)
                    defer { buffer.deallocate() }
                    let clock = ContinuousClock(), start = clock.now
                    let result = await loop.recv(fd, into: buffer, timeout: timeout, using: record)
                    results.lateness.append(result == -ETIMEDOUT ? clock.now - start - timeout : .seconds(-1000))
                })
            }
            tasks.append(loop.spawn {
                let record = AsyncCompletion()
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 1)
                defer { buffer.deallocate() }
                results.answered = await loop.recv(fds[100], into: buffer, timeout: .seconds(5), using: record)
            })
            _ = "ping".withCString { Glibc.write(feeder, $0, 4) }
            for task in tasks { await task.value }
            // The sweep after the last completion finds nothing left and does not re-arm.
            let sleeper = AsyncCompletion()
            _ = await loop.sleep(for: .milliseconds(120), using: sleeper)
            return (results.lateness, results.answered, loop.deadlines.isIdle)
        }.value
        #expect(lateness.count == 100)
        // Early by at most the loop clock's granularity (CLOCK_MONOTONIC_COARSE, read once per
        // round: a few ms); late by at most one resolution (50 ms) and a busy machine's slack.
        #expect(lateness.allSatisfy { $0 >= .milliseconds(-10) && $0 < .milliseconds(400) }, "\(lateness.sorted().prefix(3)) … \(lateness.sorted().suffix(3))")
        #expect(answered == 4)
        #expect(idle)
    }

    @Test("WriteGate: holders take turns in arrival order; a frame in parts is never interleaved")
    func writeGate() async throws {
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        let order = await loop.spawn { () -> [String] in
            let gate = WriteGate()
            let shared = OnLoop(gate)
            final class Log: @unchecked Sendable {
                // @unchecked Sendable: used by tasks on one loop.
                var entries: [String] = []
            }
            let log = Log()
            var writers: [Task<Void, Never>] = []
            for writer in 0..<3 {
                writers.append(loop.spawn {
                    await shared.value.acquire()
                    log.entries.append("\(writer) head")
                    await Task.yield()  // another writer runs here and must wait
                    log.entries.append("\(writer) body")
                    shared.value.release()
                })
            }
            for writer in writers { await writer.value }
            #expect(!gate.isHeld)
            return log.entries
        }.value
        #expect(order == ["0 head", "0 body", "1 head", "1 body", "2 head", "2 body"])
    }

    @Test("LoopTimer: fires once after its delay; a cancelled one never fires; arming an armed timer changes nothing")
    func loopTimer() async throws {
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        let (fired, cancelledFired, elapsed) = await loop.spawn { () -> (Int, Int, Duration) in
            final class Count: @unchecked Sendable {
                // @unchecked Sendable: touched only on the test's loop.
                var value = 0
            }
            let fires = Count(), cancelled = Count()
            let clock = ContinuousClock(), start = clock.now
            let timer = LoopTimer(loop: loop) { fires.value += 1 }
            timer.arm(after: .milliseconds(100))
            timer.arm(after: .milliseconds(1))  // armed already: no second expiry, no earlier one
            let other = LoopTimer(loop: loop) { cancelled.value += 1 }
            other.arm(after: .milliseconds(50))
            other.cancel()
            let wait = AsyncCompletion()
            while timer.armed { _ = await loop.sleep(for: .milliseconds(10), using: wait) }
            let elapsed = clock.now - start
            _ = await loop.sleep(for: .milliseconds(150), using: wait)
            return (fires.value, cancelled.value, elapsed)
        }.value
        #expect(fired == 1)
        #expect(cancelledFired == 0)
        #expect(elapsed >= .milliseconds(99), "\(elapsed)")
    }
}
