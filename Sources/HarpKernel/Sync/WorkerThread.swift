import Dispatch
import Glibc
import Synchronization

/// A thread of its own with a queue of jobs, run in order: where harp does what blocks —
/// SQLite (a `Database` owns one), name lookups, indexing a folder, reading a file — so that
/// no event loop ever waits for a disk or a DNS server.
public final class WorkerThread: Sendable {
    private let jobs = Mutex<(queue: [@Sendable () -> Void], stopping: Bool)>(([], false))
    private let pending = DispatchSemaphore(value: 0)

    /// `name`: the thread's, as `top -H` shows it (15 bytes at most).
    public init(name: String) {
        DetachedThread.start(name: name) { [self] in loop() }
    }

    private func loop() {
        while true {
            pending.wait()
            let (job, stop) = jobs.withLock { state -> ((@Sendable () -> Void)?, Bool) in
                state.queue.isEmpty ? (nil, state.stopping) : (state.queue.removeFirst(), false)
            }
            if let job { job() } else if stop { return }
        }
    }

    /// Queues `job`; it runs after every job queued before it.
    public func enqueue(_ job: @escaping @Sendable () -> Void) {
        jobs.withLock { $0.queue.append(job) }
        pending.signal()
    }

    /// The thread ends once the jobs queued so far have run.
    public func stop() {
        jobs.withLock { $0.stopping = true }
        pending.signal()
    }

    /// Runs `body` on this thread; the caller's task waits without blocking its loop.
    public func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            enqueue { continuation.resume(returning: body()) }
        }
    }

    /// Runs `body` on this thread and blocks the caller until it is done (commands, start-up,
    /// tests: never a loop).
    public func runSync<T>(_ body: () -> T) -> T {
        withoutActuallyEscaping(body) { body in
            let done = DispatchSemaphore(value: 0)
            let box = Box(body)
            enqueue {
                box.result = box.body!()
                // Dropped before the caller goes on: the job closure outlives this call in the
                // worker's hands, and `body` must not (it is not really escaping).
                box.body = nil
                done.signal()
            }
            done.wait()
            return box.result!
        }
    }

    private final class Box<V>: @unchecked Sendable {
        // @unchecked Sendable: the worker runs `body` and writes `result` before it signals;
        // the caller reads it after the wait.
        var body: (() -> V)?
        var result: V?
        init(_ body: @escaping () -> V) { self.body = body }
    }
}

/// Short blocking calls (getaddrinfo, reading a small file) off the loops, on two threads
/// taken in turn: one lookup that hangs does not hold the next.
public enum BlockingWork {
    private static let threads = [WorkerThread(name: "harp-blocking"), WorkerThread(name: "harp-blocking")]
    private static let turn = Atomic<Int>(0)

    public static func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        let index = turn.wrappingAdd(1, ordering: .relaxed).oldValue & 1
        return await threads[index].run(body)
    }
}
