import CShims
import Glibc

/// A one-shot timer on a loop's ring that calls `fire` on the loop thread when it expires
/// (not when it is cancelled). For periodic housekeeping — pruning idle pooled connections,
/// a listener's back-off, keep-alive pings — where a task sleeping in `loop.sleep` would be
/// one more task.
///
/// An armed timer keeps itself alive until its completion arrives (the ring holds its
/// address), so an owner may drop it right after `cancel()`. An owner that goes away must
/// cancel first: `fire` captures it unowned.
public final class LoopTimer: IOCompletion, @unchecked Sendable {
    // @unchecked Sendable: restated from IOCompletion; used only on its loop's thread.
    unowned let loop: EventLoop
    private let timespec = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: 1)
    private let fire: () -> Void
    /// True from `arm` until the timer has expired or its cancellation has completed.
    public private(set) var armed = false
    /// Held while armed: the ring's reference to this record.
    private var inFlight: Unmanaged<LoopTimer>?
    /// A timeout that expires as the cancel is on its way must not fire either.
    private var cancelled = false

    /// `fire` must not keep the timer's owner alive (capture it `unowned` or `weak`).
    public init(loop: EventLoop, fire: @escaping () -> Void) {
        self.loop = loop
        self.fire = fire
        timespec.initialize(to: __kernel_timespec())
    }

    deinit { timespec.deallocate() }

    /// Arms the timer; does nothing when it is armed already.
    public func arm(after delay: Duration) {
        loop.assertInLoop()
        guard !armed else { return }
        armed = true
        cancelled = false
        inFlight = Unmanaged.passRetained(self)
        timespec.pointee = __kernel_timespec(delay)
        loop.submit(self) { io_uring_prep_timeout($0, timespec, 0, 0) }
    }

    public func cancel() {
        guard armed else { return }
        cancelled = true
        loop.cancel(self)
    }

    public override func complete(result: Int32, flags: UInt32) {
        armed = false
        let held = inFlight
        inFlight = nil
        if result != -ECANCELED && !cancelled { fire() }
        held?.release()
    }
}
