import Synchronization

/// At most `limit` holders at once; the rest wait in order (a counting semaphore for tasks on
/// any loop). The ExApps gateway bounds its concurrent Nextcloud calls with it: each call may
/// hold a response buffer of up to a few hundred KiB, and 1,000 calls at once for distinct app
/// ids took harp to 1.09 GB (hostile probe).
public final class AsyncLimit: Sendable {
    private struct State {
        var available: Int
        var waiters: [CheckedContinuation<Void, Never>] = []
        var head = 0
    }

    private let state: Mutex<State>

    public init(_ limit: Int) {
        precondition(limit > 0, "a limit of at least one")
        state = Mutex(State(available: limit))
    }

    /// Runs `body` once a place is free.
    public func run<T>(_ body: () async -> T) async -> T {
        await acquire()
        defer { release() }
        return await body()
    }

    private func acquire() async {
        let granted = state.withLock { state in
            guard state.available > 0 else { return false }
            state.available -= 1
            return true
        }
        if granted { return }
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool in
                // A place may have been freed between the two locks.
                if state.available > 0 {
                    state.available -= 1
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    private func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard state.head < state.waiters.count else {
                state.available += 1
                return nil
            }
            let waiter = state.waiters[state.head]
            state.head += 1
            if state.head > 64 && state.head * 2 > state.waiters.count {
                state.waiters.removeFirst(state.head)
                state.head = 0
            }
            return waiter  // the place passes straight to the next waiter
        }
        next?.resume()
    }
}
