/// One task waiting on a loop for something another task on the same loop will signal (bytes
/// for a multiplexed stream, send credit, a new stream to accept), with an optional timeout.
/// A continuation; a timeout is kept by the loop's `DeadlineSweep` (no timer per wait).
///
/// Loop-confined; one waiter at a time.
public final class LoopWait {
    unowned let loop: EventLoop
    private var continuation: UnsafeContinuation<Bool, Never>?
    /// Monotonic nanoseconds after which the wait ends unsignalled (0: none).
    var deadline: UInt64 = 0
    /// Whether the loop's deadline sweep holds this wait in its list.
    var watched = false

    public init(loop: EventLoop) {
        self.loop = loop
    }

    /// True while a task waits here.
    public var isWaiting: Bool { continuation != nil }

    /// Suspends until `signal()` (true) or until `timeout` has passed (false; checked every
    /// 50 ms, like ring-operation timeouts).
    public func wait(timeout: Duration?) async -> Bool {
        loop.assertInLoop()
        precondition(continuation == nil, "one waiter at a time")
        return await withUnsafeContinuation { continuation in
            self.continuation = continuation
            if let timeout { loop.deadlines.watch(self, until: loop.now &+ timeout.nanoseconds) } else { deadline = 0 }
        }
    }

    /// Wakes the waiting task, if any.
    public func signal() { resume(true) }

    /// Called by the deadline sweep once the deadline has passed.
    func expire() { resume(false) }

    private func resume(_ signalled: Bool) {
        guard let continuation else { return }
        self.continuation = nil
        deadline = 0
        continuation.resume(returning: signalled)
    }
}
