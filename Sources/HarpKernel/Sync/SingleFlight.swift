import Synchronization

/// Concurrent calls for one key share one piece of work (Go's singleflight): the first caller
/// runs it, the others wait for its result. The ExApps gateway uses it so that 50 requests
/// arriving together for an uncached app or session make one Nextcloud call, not 50 (HaRP
/// coalesced app records but not sessions: 50 `user-info` calls on a cold cache).
///
/// Waiters may be on other loops: each resumes on its own task's executor. The work itself
/// runs in the first caller's task, on its loop, and must store its result wherever later
/// callers look first (a cache) before it returns.
public final class SingleFlight<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private let flights = Mutex<[Key: [CheckedContinuation<Value?, Never>]]>([:])

    public init() {}

    /// The value of `work` for `key`: computed here, or by a call for the same key that is
    /// already running.
    public func run(_ key: Key, _ work: () async -> Value) async -> Value {
        while true {
            let leads = flights.withLock { flights in
                guard flights[key] == nil else { return false }
                flights[key] = []
                return true
            }
            if leads {
                let value = await work()
                let waiters = flights.withLock { $0.removeValue(forKey: key) } ?? []
                for waiter in waiters { waiter.resume(returning: value) }
                return value
            }
            // The flight may end between the check above and joining it: then nil comes back
            // at once and the caller tries again (finding the stored result, or leading).
            let shared: Value? = await withCheckedContinuation { continuation in
                let joined = flights.withLock { flights in
                    guard flights[key] != nil else { return false }
                    flights[key]!.append(continuation)
                    return true
                }
                if !joined { continuation.resume(returning: nil) }
            }
            if let shared { return shared }
        }
    }

    /// Calls in flight now (for tests and metrics).
    public var inFlight: Int { flights.withLock { $0.count } }
}
