import CShims
import Glibc

/// One io_uring, owned by the thread that created it (`IORING_SETUP_SINGLE_ISSUER`).
///
/// Submission is batched: `sqe()` hands out entries that go to the kernel with the next
/// `submitAndWait`. Completions are copied out in batches with `io_uring_peek_batch_cqe`
/// (liburing's `io_uring_for_each_cqe` is a macro Swift cannot import).
final class Ring {
    private var ring = io_uring()
    private var cqes: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>
    let batchSize: Int

    /// - Throws: `RingUnavailable` when the kernel refuses to create a ring.
    init(entries: UInt32, batchSize: Int = 256) throws(RingUnavailable) {
        self.batchSize = batchSize
        // Throw before `cqes` exists: a class whose init fails before every stored property
        // is set does not run deinit (which would exit a ring that was never set up).
        if let forced = RingUnavailable.forcedFailure() { throw forced }
        // Preferred flags first; older kernels reject unknown setup flags with EINVAL.
        let flagSets: [UInt32] = [
            IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
            IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN,
            IORING_SETUP_COOP_TASKRUN,
            0,
        ]
        var lastError: Int32 = 0
        for flags in flagSets {
            var params = io_uring_params()
            params.flags = flags
            let rc = io_uring_queue_init_params(entries, &ring, &params)
            if rc == 0 {
                cqes = .allocate(capacity: batchSize)
                return
            }
            lastError = -rc
            if lastError != EINVAL { break }
        }
        throw RingUnavailable(errno: lastError)
    }

    deinit {
        io_uring_queue_exit(&ring)
        cqes.deallocate()
    }

    /// A free submission entry, already zeroed by liburing's prep helpers' callers.
    /// When the submission queue is full, what is queued goes to the kernel first.
    func sqe() -> UnsafeMutablePointer<io_uring_sqe> {
        if let sqe = io_uring_get_sqe(&ring) { return sqe }
        // Full: hand the queue to the kernel. Up to a few rounds: the kernel may refuse while
        // its completion queue is full (EBUSY/EAGAIN), and then takes more once completions
        // have been moved out of its way (TigerBeetle's flush_submissions does the same).
        for _ in 0..<16 {
            let rc = io_uring_submit(&ring)
            if let sqe = io_uring_get_sqe(&ring) { return sqe }
            if rc < 0 { Self.check(rc, during: "io_uring_submit") }
            stashCompletions()
        }
        fatalError("io_uring: the submission queue stays full; the kernel takes no entries")
    }

    /// Submits what is queued and, when `wait` is true, blocks until one completion arrives.
    func submit(wait: Bool) {
        // Nothing to wait for while completions wait in the stash: the loop reaps them first.
        let rc = io_uring_submit_and_wait(&ring, wait && stashed.isEmpty ? 1 : 0)
        if rc < 0 { Self.check(rc, during: "io_uring_submit_and_wait") }
    }

    /// A failed submit: EINTR (a signal), EAGAIN (kernel memory short for a moment), EBUSY
    /// (the completion queue is full until it is reaped) and ETIME lose nothing — the entries
    /// stay queued and the loop reaps, then submits again. Anything else (EBADF, EFAULT,
    /// EINVAL: a broken ring or a corrupt entry) would make every later I/O of this loop hang
    /// silently, so it stops the process with the reason.
    private static func check(_ rc: Int32, during call: String) {
        switch -rc {
        case EINTR, EAGAIN, EBUSY, ETIME: return
        default: fatalError("\(call) failed: \(String(cString: strerror(-rc))) (errno \(-rc)); the event loop cannot go on")
        }
    }

    /// Completions moved out of the kernel's queue by `sqe()` when the kernel refused new
    /// entries; the loop's next reap hands them out first, in order.
    private var stashed: [(UInt64, Int32, UInt32)] = []

    private func stashCompletions() {
        while true {
            let count = Int(io_uring_peek_batch_cqe(&ring, cqes, UInt32(batchSize)))
            guard count > 0 else { return }
            for i in 0..<count {
                let cqe = cqes[i]!.pointee
                stashed.append((cqe.user_data, cqe.res, cqe.flags))
            }
            io_uring_cq_advance(&ring, UInt32(count))
        }
    }

    /// Copies up to `batchSize` completions out, advances the queue, and calls `body` with
    /// each (record, result, flags) after the queue has been advanced, so that `body` may
    /// submit freely. Returns how many completions were handled.
    @inline(__always)
    func reap(into batch: inout [(UInt64, Int32, UInt32)]) -> Int {
        if !stashed.isEmpty {
            // Rare (a full submission queue met a full completion queue): the stash first.
            batch.removeAll(keepingCapacity: true)
            swap(&batch, &stashed)
            return batch.count
        }
        let count = Int(io_uring_peek_batch_cqe(&ring, cqes, UInt32(batchSize)))
        guard count > 0 else { return 0 }
        batch.removeAll(keepingCapacity: true)
        for i in 0..<count {
            let cqe = cqes[i]!.pointee
            batch.append((cqe.user_data, cqe.res, cqe.flags))
        }
        io_uring_cq_advance(&ring, UInt32(count))
        return count
    }
}
