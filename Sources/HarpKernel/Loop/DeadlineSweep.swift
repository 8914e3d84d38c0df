import CShims
import Glibc

/// Per-loop timeouts for ring operations without a kernel timer per operation.
///
/// Records with a deadline sit in a list; while the list is not empty, one timeout entry
/// wakes the loop every `resolution` and cancels each pending operation whose deadline has
/// passed (its task then sees `-ETIMEDOUT`). Completed records leave the list at the next
/// sweep. Cost: one wakeup per `resolution` per loop while anything is watched; precision:
/// a timeout fires between its deadline and one `resolution` later.
public final class DeadlineSweep: IOCompletion, @unchecked Sendable {
    // @unchecked Sendable: confined to the loop thread like every completion record.
    unowned let loop: EventLoop
    private var watched: [AsyncCompletion] = []
    /// Waits between tasks (`LoopWait`) with a deadline, swept the same way.
    private var waits: [LoopWait] = []
    private var armed = false
    private let timespec = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: 1)
    static let resolution: Duration = .milliseconds(50)

    init(loop: EventLoop) {
        self.loop = loop
        timespec.initialize(to: __kernel_timespec(Self.resolution))
    }

    deinit { timespec.deallocate() }

    func watch(_ record: AsyncCompletion, until deadline: UInt64) {
        loop.assertInLoop()
        record.deadline = deadline
        record.timedOut = false
        if !record.watched {
            record.watched = true
            watched.append(record)
        }
        if !armed { arm() }
    }

    func watch(_ wait: LoopWait, until deadline: UInt64) {
        loop.assertInLoop()
        wait.deadline = deadline
        if !wait.watched {
            wait.watched = true
            waits.append(wait)
        }
        if !armed { arm() }
    }

    /// Nothing watched and no timeout armed: an idle loop costs no wakeups.
    var isIdle: Bool { !armed && watched.isEmpty && waits.isEmpty }

    private func arm() {
        armed = true
        loop.submit(self) { io_uring_prep_timeout($0, timespec, 0, 0) }
    }

    public override func complete(result: Int32, flags: UInt32) {
        armed = false
        let now = loop.now
        watched.removeAll { record in
            guard record.deadline != 0 && record.isPending else {
                record.watched = false
                return true
            }
            if now >= record.deadline {
                record.timedOut = true
                record.deadline = 0
                loop.cancel(record)
            }
            return false
        }
        waits.removeAll { wait in
            guard wait.deadline != 0 && wait.isWaiting else {
                wait.watched = false
                return true
            }
            if now >= wait.deadline { wait.expire() }
            return false
        }
        if !watched.isEmpty || !waits.isEmpty { arm() }
    }
}
