import CShims
import Dispatch
import Glibc
import Synchronization

/// One thread, one io_uring. Everything a loop owns (its ring, pipes, connections) is touched
/// only on its thread; other threads reach it only through `enqueue`, which takes a lock and
/// wakes the loop through an eventfd.
///
/// A loop is also a Swift `TaskExecutor`: a connection handler started with
/// `Task(executorPreference: loop)` runs its jobs here, and each `await` on a ring operation is
/// one completion resuming one continuation — no thread hop and no allocation per operation.
public final class EventLoop: TaskExecutor, @unchecked Sendable {
    // @unchecked Sendable: the mutable state below is confined to the loop thread; `inbox`,
    // `inboxHasJobs`, `stopRequested` and the `pulse` atomics are the only members touched
    // from other threads.

    public let index: Int
    private var ring: Ring!
    private var jobs: [UnownedJob] = []
    private var running: [UnownedJob] = []
    private var batch: [(UInt64, Int32, UInt32)] = []
    private let inbox = Mutex<[UnownedJob]>([])
    private let inboxHasJobs = Atomic<Bool>(false)
    private let stopRequested = Atomic<Bool>(false)
    private let wakeFD: Int32
    private var wake: WakeRead!
    private var thread = pthread_t()
    private let finished = DispatchSemaphore(value: 0)

    /// Monotonic nanoseconds, read once per loop round: cheap "now" for idle bookkeeping.
    public private(set) var now: UInt64 = EventLoop.monotonicNanos()
    /// Pipes for splice relays, reused across connections of this loop.
    public private(set) var pipes: PipePool!
    /// Buffers for copying through user space (TLS legs), reused across connections of this loop.
    public let copyBuffers = BufferPool(size: BufferPool.copySize, maxFree: 32)
    /// TLS streams' input buffers while they receive (idle streams hold none), reused likewise.
    let tlsInputBuffers = BufferPool(size: TLSStream.initialInput, maxFree: 64)
    /// First-size (4 KiB) read buffers that their owners give back between messages (an HTTP
    /// response buffer), reused likewise.
    public let readBuffers = BufferPool(size: 4096, maxFree: 256)
    /// Small buffers for writes that need stable memory (an array's bytes), reused likewise.
    public let smallBuffers = BufferPool(size: BufferPool.smallSize, maxFree: 256)
    /// Connections that plugins have registered as open; shutdown waits for this to reach 0.
    public let openConnections = Atomic<Int>(0)
    /// What the stall detector (`StallDetector`, its own thread) reads of this loop.
    let pulse = LoopPulse()

    /// Starts the loop's thread and creates its ring there (single-issuer rings must be
    /// created by the thread that submits). Throws when the kernel refuses the ring.
    public init(index: Int, ringEntries: UInt32 = 4096) throws(RingUnavailable) {
        self.index = index
        // splice(2) into a closed socket raises SIGPIPE (there is no MSG_NOSIGNAL for it);
        // errors must come back as EPIPE instead of killing the process.
        signal(SIGPIPE, SIG_IGN)
        wakeFD = eventfd(0, Int32(EFD_CLOEXEC))
        let start = LoopStart(entries: ringEntries)
        start.loop = self
        let unmanaged = Unmanaged.passRetained(start)
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        var tid = pthread_t()
        let rc = pthread_create(&tid, &attributes, { raw in
            let start = Unmanaged<LoopStart>.fromOpaque(raw!).takeRetainedValue()
            start.loop!.threadMain(start)
            return nil
        }, unmanaged.toOpaque())
        pthread_attr_destroy(&attributes)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        DetachedThread.name(tid, "harp-loop-\(index)")
        pthread_detach(tid)
        start.started.wait()
        if let error = start.error {
            Glibc.close(wakeFD)
            throw error
        }
    }

    private func threadMain(_ start: LoopStart) {
        thread = pthread_self()
        do {
            ring = try Ring(entries: start.entries)
        } catch {
            start.error = error
            start.started.signal()
            finished.signal()
            return
        }
        pipes = PipePool()
        wake = WakeRead(loop: self)
        wake.arm()
        start.started.signal()
        run()
        // Dropping the ring cancels whatever is still in flight; no record is touched again.
        pipes.drain()
        ring = nil
        Glibc.close(wakeFD)
        finished.signal()
    }

    /// A round: the completions the ring has, then the jobs they made runnable. The pulse
    /// marks a round's start, its end and the wait between rounds, which is all the stall
    /// detector needs (relaxed stores and one more coarse clock read a round: a few ns).
    private func run() {
        now = Self.monotonicNanos()
        while !stopRequested.load(ordering: .acquiring) {
            runJobs()
            pulse.roundEnded(startedAt: now)
            let idle = jobs.isEmpty && !inboxHasJobs.load(ordering: .relaxed)
            if idle { pulse.waiting() }
            ring.submit(wait: idle)
            now = Self.monotonicNanos()
            pulse.roundStarted(at: now)
            dispatchCompletions()
        }
        pulse.waiting()
    }

    /// Delivers a batch of completions: first the whole batch is copied out and the queue
    /// advanced, then each record runs, so a completion handler never re-enters the reaper.
    @inline(__always)
    private func dispatchCompletions() {
        while ring.reap(into: &batch) > 0 {
            for (userData, result, flags) in batch where userData != 0 {
                let record = Unmanaged<IOCompletion>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(userData))!)
                    .takeUnretainedValue()
                pulse.running(type(of: record))
                record.complete(result: result, flags: flags)
            }
            pulse.running(nil)
            if batch.count < ring.batchSize { break }
        }
    }

    private func runJobs() {
        if inboxHasJobs.load(ordering: .acquiring) {
            inboxHasJobs.store(false, ordering: .releasing)
            inbox.withLock { pending in
                jobs.append(contentsOf: pending)
                pending.removeAll(keepingCapacity: true)
            }
        }
        // Jobs enqueued while these run go to `jobs` and run in the next round, after the
        // ring has been submitted and reaped: I/O never starves behind a busy task.
        guard !jobs.isEmpty else { return }
        swap(&jobs, &running)
        let executor = asUnownedTaskExecutor()
        for job in running {
            job.runSynchronously(on: executor)
        }
        running.removeAll(keepingCapacity: true)
    }

    // MARK: TaskExecutor

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if isCurrent {
            jobs.append(job)
            return
        }
        inbox.withLock { $0.append(job) }
        if !inboxHasJobs.exchange(true, ordering: .acquiringAndReleasing) {
            var one: UInt64 = 1
            _ = Glibc.write(wakeFD, &one, 8)
        }
    }

    /// True on this loop's thread.
    @inline(__always)
    public var isCurrent: Bool { pthread_equal(pthread_self(), thread) != 0 }

    /// Debug builds stop here when loop-confined state is touched from another thread (as
    /// swift-nio's `assertInEventLoop`); release builds compile it away.
    @inline(__always)
    public func assertInLoop(file: StaticString = #fileID, line: UInt = #line) {
        assert(isCurrent, "loop-confined state used off loop \(index)'s thread", file: file, line: line)
    }

    /// Runs `body` as a new task whose jobs run on this loop.
    @discardableResult
    public func spawn<T: Sendable>(_ body: @escaping @Sendable () async -> T) -> Task<T, Never> {
        Task(executorPreference: self, operation: body)
    }

    /// Runs a connection's handler as a task on this loop, counted in `openConnections` (what
    /// a graceful shutdown waits for) while it runs.
    public func serveConnection(_ body: @escaping @Sendable () async -> Void) {
        spawn { [self] in
            openConnections.add(1, ordering: .relaxed)
            defer { openConnections.subtract(1, ordering: .relaxed) }
            await body()
        }
    }

    /// Asks the loop to stop after the current round and waits until its thread has ended.
    public func shutdown() {
        if stopRequested.exchange(true, ordering: .acquiringAndReleasing) { return }
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
        finished.wait()
    }

    // MARK: Submission (loop thread only)

    /// Queues one operation whose completion goes to `record`. `prepare` fills the entry.
    @inline(__always)
    public func submit(_ record: IOCompletion, _ prepare: (UnsafeMutablePointer<io_uring_sqe>) -> Void) {
        assert(isCurrent, "ring operations must be submitted on the loop's own thread")
        let sqe = ring.sqe()
        prepare(sqe)
        io_uring_sqe_set_data64(sqe, record.userData)
    }

    /// Queues an entry whose completion nobody reads (user_data 0), e.g. a linked timeout.
    @inline(__always)
    func submitUnobserved(_ prepare: (UnsafeMutablePointer<io_uring_sqe>) -> Void) {
        assert(isCurrent, "ring operations must be submitted on the loop's own thread")
        let sqe = ring.sqe()
        prepare(sqe)
        io_uring_sqe_set_data64(sqe, 0)
    }

    /// Queues one operation and suspends the calling task until it completes.
    /// Returns the operation's result: a count or a `-errno`. With a `timeout`, the operation
    /// is cancelled once it has not completed in time and returns `-ETIMEDOUT`.
    ///
    /// Timeouts are checked by the loop's deadline sweep (`DeadlineSweep`), not by a kernel
    /// timer per operation: a linked timeout arms and cancels an hrtimer on every recv and
    /// send, which measured as the largest single kernel cost of a proxied small request.
    @inline(__always)
    public func perform(_ record: AsyncCompletion, timeout: Duration? = nil,
                        _ prepare: (UnsafeMutablePointer<io_uring_sqe>) -> Void) async -> Int32 {
        precondition(record.continuation == nil, "a completion record serves one operation at a time")
        if let timeout { deadlines.watch(record, until: now &+ timeout.nanoseconds) }
        let result = await withUnsafeContinuation { continuation in
            record.continuation = continuation
            submit(record, prepare)
        }
        record.deadline = 0
        if record.timedOut {
            record.timedOut = false
            // The operation may have completed before the cancel reached it: keep its result.
            if result == -ECANCELED || result == -EINTR { return -ETIMEDOUT }
        }
        return result
    }

    /// Sweeps watched records for expired deadlines (see `DeadlineSweep`).
    private(set) lazy var deadlines = DeadlineSweep(loop: self)

    static func monotonicNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Monotonic nanoseconds at full resolution (vDSO, ~20 ns): for latencies, where the
    /// coarse clock's few milliseconds of granularity would hide everything.
    public static func preciseNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Keeps a read posted on the eventfd so that `enqueue` from another thread wakes the ring.
    private final class WakeRead: IOCompletion, @unchecked Sendable {
        // @unchecked Sendable: restated from IOCompletion; used only on its loop's thread.
        unowned let loop: EventLoop
        var counter: UInt64 = 0
        let buffer = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)

        init(loop: EventLoop) { self.loop = loop }
        deinit { buffer.deallocate() }

        func arm() {
            loop.submit(self) { io_uring_prep_read($0, loop.wakeFD, buffer, 8, 0) }
        }

        override func complete(result: Int32, flags: UInt32) {
            if !loop.stopRequested.load(ordering: .relaxed) { arm() }
        }
    }

    /// Handed to the new thread; `error` is written before `started` is signalled and read
    /// only after the wait, so the semaphore orders the accesses.
    private final class LoopStart {
        var loop: EventLoop?
        let entries: UInt32
        let started = DispatchSemaphore(value: 0)
        var error: RingUnavailable?
        init(entries: UInt32) { self.entries = entries }
    }
}
