import Synchronization

/// At most `limit` holders at once; the rest wait in order, each no longer than its own
/// timeout (a counting semaphore for tasks on any loop). The ExApps gateway bounds its
/// concurrent Nextcloud calls with it: each call may hold a response buffer of up to a few
/// hundred KiB, and 1,000 calls at once for distinct app ids took harp to 1.09 GB (hostile
/// probe). The wait counts against the caller's deadline: without one, requests queued behind
/// a slow Nextcloud waited minutes (a fresh login took 171 s — the same probe, again).
public final class AsyncLimit: Sendable {
    private struct Waiter {
        let id: UInt64
        let continuation: CheckedContinuation<Bool, Never>
    }

    private struct State {
        var available: Int
        var waiters: [Waiter] = []
        var nextID: UInt64 = 0
    }

    private let state: Mutex<State>
    /// Waiters beyond this are turned away at once: a queue that long would not drain within
    /// anyone's timeout, and its list operations are linear.
    private let maxWaiters: Int

    public init(_ limit: Int, maxWaiters: Int = 4096) {
        precondition(limit > 0, "a limit of at least one")
        state = Mutex(State(available: limit))
        self.maxWaiters = maxWaiters
    }

    /// Runs `body` once a place is free, or returns nil when none came within `timeout`
    /// (measured on `loop`, the caller's).
    public func run<T>(on loop: EventLoop, timeout: Duration, _ body: () async -> T) async -> T? {
        guard await acquire(on: loop, timeout: timeout) else { return nil }
        defer { release() }
        return await body()
    }

    private func acquire(on loop: EventLoop, timeout: Duration) async -> Bool {
        let granted = state.withLock { state in
            guard state.available > 0 else { return false }
            state.available -= 1
            return true
        }
        if granted { return true }
        var timer: LoopTimer?
        let acquired = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let id = state.withLock { state -> UInt64? in
                // A place may have been freed between the two locks.
                if state.available > 0 {
                    state.available -= 1
                    return nil
                }
                guard state.waiters.count < maxWaiters else { return 0 }
                state.nextID += 1
                state.waiters.append(Waiter(id: state.nextID, continuation: continuation))
                return state.nextID
            }
            guard let id else { return continuation.resume(returning: true) }
            guard id != 0 else { return continuation.resume(returning: false) }  // the queue is full
            // Whoever takes the waiter out of the list resumes it: a release (true) or this
            // timer (false); the other finds it gone.
            let expiry = LoopTimer(loop: loop) { [self] in
                let expired = state.withLock { state -> Waiter? in
                    guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                    return state.waiters.remove(at: index)
                }
                expired?.continuation.resume(returning: false)
            }
            expiry.arm(after: timeout)
            timer = expiry
        }
        timer?.cancel()
        return acquired
    }

    private func release() {
        let next = state.withLock { state -> Waiter? in
            guard !state.waiters.isEmpty else {
                state.available += 1
                return nil
            }
            return state.waiters.removeFirst()  // the place passes straight to the next waiter
        }
        next?.continuation.resume(returning: true)
    }
}
