import Synchronization

/// At most one log line per `interval` for a warning a peer can cause at will (a wrong key on
/// every request of a flood): `allow()` says whether to log now, and how many were held back
/// since the last line, for the line to say so.
public final class LogThrottle: Sendable {
    private let interval: UInt64
    /// When the last line was allowed (monotonic ns; 0: never) and how many were held since.
    private let state = Mutex<(last: UInt64, held: Int)>((0, 0))

    public init(interval: Duration) {
        self.interval = interval.nanoseconds
    }

    /// Whether to log now; `held` is how many calls were not logged since the last line.
    public func allow() -> (log: Bool, held: Int) {
        let now = EventLoop.preciseNanos()
        return state.withLock { state in
            if state.last != 0 && now &- state.last < interval {
                state.held += 1
                return (false, 0)
            }
            let held = state.held
            state = (now, 0)
            return (true, held)
        }
    }
}
