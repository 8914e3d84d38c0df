import HarpKernel
import Logging
import Synchronization

/// Control-plane and AppAPI calls that came with a wrong `harp-shared-key`: usually a deploy
/// daemon registered in Nextcloud with another key than harp's. Each is counted (for
/// `harp exapps check`) and a warning naming the source is logged at most once a minute — a
/// flood of wrong keys must not flood the log.
final class RefusedKeys: Sendable {
    private struct State {
        var count = 0
        var lastFrom = ""
        var lastAt: UInt64 = 0
    }

    private let state = Mutex(State())
    private let throttle = LogThrottle(interval: .seconds(60))
    private let logger: Logger

    init(logger: Logger) { self.logger = logger }

    func refused(from source: String, path: String) {
        let now = EventLoop.preciseNanos()
        state.withLock { state in
            state.count += 1
            state.lastFrom = source
            state.lastAt = now
        }
        let (log, held) = throttle.allow()
        guard log else { return }
        logger.warning("""
            a control-plane call came with a wrong harp-shared-key: it must equal HP_SHARED_KEY (exapps.shared_key), \
            the key the deploy daemon is registered with in Nextcloud (AppAPI's "HaRP shared key")
            """, metadata: ["from": "\(source)", "path": "\(path)", "not_logged_since_last": "\(held)"])
    }

    /// How many were refused, and the last one's source and age in seconds.
    var summary: (count: Int, lastFrom: String, secondsAgo: Int) {
        let now = EventLoop.preciseNanos()
        return state.withLock { ($0.count, $0.lastFrom, $0.lastAt == 0 ? 0 : Int((now &- $0.lastAt) / 1_000_000_000)) }
    }
}
