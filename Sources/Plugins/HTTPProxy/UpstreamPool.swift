import HarpKernel

/// Idle keep-alive connections to upstreams, one pool per loop (connections never change
/// loops, so no lock).
///
/// Liveness is checked on every reuse: an upstream may close a kept-alive connection at any
/// moment (right after its response, or at a keep-alive timeout near the client's request
/// gap), and a request sent into a closed connection costs a retry at best. The check is one
/// non-blocking peek (`isQuietWhileIdle`). Connections idle past the limit are closed by a
/// timer on the loop, not only when the pool is next used, so none lingers in CLOSE-WAIT.
final class UpstreamPool {
    private struct Idle {
        let stream: any ByteStream
        let since: UInt64
    }

    /// A box per upstream: the dictionary is only read per request (mutating a value in
    /// place goes through an accessor that allocates).
    private final class IdleList {
        var connections: [Idle] = []
    }

    let loop: EventLoop
    private var idle: [Upstream: IdleList] = [:]
    private var idleCount = 0
    private let maxPerUpstream: Int
    private let idleLimit: UInt64
    private lazy var pruneTimer = LoopTimer(loop: loop) { [unowned self] in prune() }

    init(loop: EventLoop, maxPerUpstream: Int, idleTimeout: Duration) {
        self.loop = loop
        self.maxPerUpstream = maxPerUpstream
        idleLimit = idleTimeout.nanoseconds
    }

    /// A live idle connection to `upstream`, most recently used first.
    func take(_ upstream: Upstream) -> (any ByteStream)? {
        loop.assertInLoop()
        guard let list = idle[upstream] else { return nil }
        let now = loop.now
        while let connection = list.connections.popLast() {
            idleCount -= 1
            if now &- connection.since <= idleLimit && connection.stream.isQuietWhileIdle() { return connection.stream }
            connection.stream.abort()
        }
        return nil
    }

    func give(_ stream: any ByteStream, to upstream: Upstream) {
        loop.assertInLoop()
        guard maxPerUpstream > 0 else {
            stream.abort()
            return
        }
        let list: IdleList
        if let existing = idle[upstream] {
            list = existing
        } else {
            list = IdleList()
            idle[upstream] = list
        }
        if list.connections.count >= maxPerUpstream {
            list.connections.removeFirst().stream.abort()
            idleCount -= 1
        }
        list.connections.append(Idle(stream: stream, since: loop.now))
        idleCount += 1
        if !pruneTimer.armed { pruneTimer.arm(after: pruneInterval) }
    }

    /// Half the idle limit (at least 100 ms): a connection is closed at most 1.5 × the limit
    /// after its last use.
    private var pruneInterval: Duration { .nanoseconds(Int64(max(idleLimit / 2, 100_000_000))) }

    /// Closes connections idle past the limit, and those the upstream has closed meanwhile.
    private func prune() {
        let now = loop.now
        for list in idle.values where !list.connections.isEmpty {
            list.connections.removeAll { connection in
                let stale = now &- connection.since > idleLimit || !connection.stream.isQuietWhileIdle()
                if stale {
                    connection.stream.abort()
                    idleCount -= 1
                }
                return stale
            }
        }
        if idleCount > 0 { pruneTimer.arm(after: pruneInterval) }
    }
}
