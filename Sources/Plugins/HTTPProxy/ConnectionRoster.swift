import HarpKernel

/// The client connections of one loop, for the connection limit: how many are open, and
/// which are idle between kept-alive requests, oldest first. At the limit a new connection
/// takes the place of the longest-idle kept-alive one (nginx does the same), so fresh clients
/// are served while idle ones pay; when none is idle, the new connection is refused.
///
/// Loop-confined. The idle list is intrusive (links live in `ProxyConnection`): marking a
/// connection idle and busy again on every request allocates nothing.
final class ConnectionRoster {
    let limit: Int
    private(set) var open = 0
    private var oldest: ProxyConnection?
    private var newest: ProxyConnection?

    init(limit: Int) {
        self.limit = limit
    }

    /// Called for each accepted connection: true to serve it (then `leave` when it ends).
    func admit() -> Bool {
        if open >= limit {
            guard let victim = oldest else { return false }
            working(victim)
            victim.shed()
        }
        open += 1
        return true
    }

    func leave() {
        assert(open > 0, "left more connections than were admitted")
        open -= 1
    }

    /// `connection` waits for its next request.
    func idle(_ connection: ProxyConnection) {
        assert(connection.idleNewer == nil && connection.idleOlder == nil && oldest !== connection, "idle twice")
        connection.idleOlder = newest
        newest?.idleNewer = connection
        newest = connection
        if oldest == nil { oldest = connection }
    }

    /// `connection` has a request again (or is ending).
    func working(_ connection: ProxyConnection) {
        guard connection.idleOlder != nil || connection.idleNewer != nil || oldest === connection else { return }
        if let older = connection.idleOlder { older.idleNewer = connection.idleNewer } else { oldest = connection.idleNewer }
        if let newer = connection.idleNewer { newer.idleOlder = connection.idleOlder } else { newest = connection.idleOlder }
        connection.idleOlder = nil
        connection.idleNewer = nil
    }
}
