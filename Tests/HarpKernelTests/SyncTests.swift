import HarpKernel
import Synchronization
import Testing

/// `SingleFlight` and `AsyncLimit`: tasks on several loops sharing one piece of work, and
/// taking turns.
@Suite("sync")
struct SyncTests {
    final class Counters: Sendable {
        let runs = Atomic<Int>(0)
        let inside = Atomic<Int>(0)
        let most = Atomic<Int>(0)
    }

    @Test("50 concurrent calls for one key on two loops run the work once and all get its value")
    func singleFlight() async throws {
        let loops = try [EventLoop(index: 0), EventLoop(index: 1)]
        defer { loops.forEach { $0.shutdown() } }
        let flight = SingleFlight<String, Int>()
        let counters = Counters()
        let timer = AsyncCompletion()
        let gate = loops[0]
        let values = await withTaskGroup(of: Int.self) { group in
            for index in 0..<50 {
                let loop = loops[index % 2]
                group.addTask {
                    await loop.spawn {
                        await flight.run("key") {
                            counters.runs.add(1, ordering: .relaxed)
                            _ = await gate.spawn { await gate.sleep(for: .milliseconds(200), using: timer) }.value
                            return 42
                        }
                    }.value
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(values.count == 50 && values.allSatisfy { $0 == 42 })
        #expect(counters.runs.load(ordering: .relaxed) == 1)
        #expect(flight.inFlight == 0)
    }

    @Test("an AsyncLimit of 3 lets 3 of 20 tasks in at once, and all of them in the end")
    func asyncLimit() async throws {
        let loops = try [EventLoop(index: 0), EventLoop(index: 1)]
        defer { loops.forEach { $0.shutdown() } }
        let limit = AsyncLimit(3)
        let counters = Counters()
        await withTaskGroup(of: Void.self) { group in
            for index in 0..<20 {
                let loop = loops[index % 2]
                group.addTask {
                    await loop.spawn {
                        _ = await limit.run(on: loop, timeout: .seconds(30)) {
                            let now = counters.inside.add(1, ordering: .relaxed).newValue
                            var most = counters.most.load(ordering: .relaxed)
                            while now > most, !counters.most.compareExchange(expected: most, desired: now, ordering: .relaxed).exchanged {
                                most = counters.most.load(ordering: .relaxed)
                            }
                            _ = await loop.sleep(for: .milliseconds(20), using: AsyncCompletion())
                            counters.inside.subtract(1, ordering: .relaxed)
                            counters.runs.add(1, ordering: .relaxed)
                        }
                    }.value
                }
            }
        }
        #expect(counters.runs.load(ordering: .relaxed) == 20)
        #expect(counters.most.load(ordering: .relaxed) == 3)
    }

    @Test("a waiter that gets no place within its timeout gives up (nil) and leaves the queue; the next one still gets the place")
    func asyncLimitTimeout() async throws {
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        let limit = AsyncLimit(1)
        let results = await loop.spawn { () -> [String] in
            let holder = loop.spawn {
                await limit.run(on: loop, timeout: .seconds(5)) {
                    _ = await loop.sleep(for: .milliseconds(400), using: AsyncCompletion())
                    return "held"
                } ?? "refused"
            }
            _ = await loop.sleep(for: .milliseconds(50), using: AsyncCompletion())
            let impatient = await limit.run(on: loop, timeout: .milliseconds(100)) { "impatient ran" } ?? "impatient gave up"
            let patient = await limit.run(on: loop, timeout: .seconds(5)) { "patient ran" } ?? "patient gave up"
            return [await holder.value, impatient, patient]
        }.value
        #expect(results == ["held", "impatient gave up", "patient ran"])
    }
}
