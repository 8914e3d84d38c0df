import CoreMetrics
import HarpKernel

/// Idle keep-alive connections to upstreams, one pool per loop (connections never change
/// loops, so no lock).
///
/// How many are kept follows the need: per upstream, the pool counts the connections in use
/// (taken from it or newly opened, not yet given back) and keeps as many idle as were in use
/// at once lately — the most in use during the current and the previous prune window — up to
/// `[http] upstream_keepalive`. A fixed small limit made steady load churn: with 50 clients
/// and 32 kept, every response beyond the 32nd closed its connection and the next request
/// opened one (2,300–23,000 new upstream connections per 5 s run, where HaRP opened 50–80);
/// a TLS upstream paid a handshake each time and the host a TIME_WAIT entry.
///
/// Liveness is checked on every reuse: an upstream may close a kept-alive connection at any
/// moment (right after its response, or at a keep-alive timeout near the client's request
/// gap), and a request sent into a closed connection costs a retry at best. The check is one
/// non-blocking peek (`isQuietWhileIdle`). Connections idle past the limit are closed by a
/// timer on the loop, not only when the pool is next used, so none lingers in CLOSE-WAIT;
/// the same timer starts a new window for the need.
final class UpstreamPool {
    private struct Idle {
        let stream: any ByteStream
        let since: UInt64
    }

    /// One upstream's connections (a class: the dictionary is only read per request —
    /// mutating a value in place goes through an accessor that allocates).
    private final class PerUpstream {
        var idle: [Idle] = []
        /// Taken or opened, not yet given back or discarded.
        var inUse = 0
        /// The most in use at once in this window and in the one before.
        var peak = 0
        var previousPeak = 0
        /// `harp_http_upstream_connections_total{upstream, outcome}`.
        let opened: Counter
        let reused: Counter

        init(_ upstream: Upstream) {
            opened = Counter(label: "harp_http_upstream_connections_total", dimensions: [("upstream", "\(upstream)"), ("outcome", "opened")])
            reused = Counter(label: "harp_http_upstream_connections_total", dimensions: [("upstream", "\(upstream)"), ("outcome", "reused")])
        }

        func started() {
            inUse += 1
            peak = max(peak, inUse)
        }
    }

    let loop: EventLoop
    private var upstreams: [Upstream: PerUpstream] = [:]
    private var idleCount = 0
    /// At most this many idle per upstream (`[http] upstream_keepalive`; 0: no keep-alive).
    private let ceiling: Int
    private let idleLimit: UInt64
    private lazy var pruneTimer = LoopTimer(loop: loop) { [unowned self] in prune() }

    init(loop: EventLoop, maxPerUpstream: Int, idleTimeout: Duration) {
        self.loop = loop
        ceiling = maxPerUpstream
        idleLimit = idleTimeout.nanoseconds
    }

    private func state(_ upstream: Upstream) -> PerUpstream {
        if let existing = upstreams[upstream] { return existing }
        let created = PerUpstream(upstream)
        upstreams[upstream] = created
        return created
    }

    /// A live idle connection to `upstream`, most recently used first (counted in use).
    func take(_ upstream: Upstream) -> (any ByteStream)? {
        loop.assertInLoop()
        guard let state = upstreams[upstream] else { return nil }
        let now = loop.now
        while let connection = state.idle.popLast() {
            idleCount -= 1
            if now &- connection.since <= idleLimit && connection.stream.isQuietWhileIdle() {
                state.started()
                state.reused.increment()
                return connection.stream
            }
            connection.stream.abort()
        }
        return nil
    }

    /// A new connection to `upstream` is in use (dialed by the caller).
    func opened(_ upstream: Upstream) {
        loop.assertInLoop()
        let state = state(upstream)
        state.started()
        state.opened.increment()
    }

    /// A connection that served its exchange and may serve another: kept while fewer are idle
    /// than were in use at once lately (up to the ceiling), closed otherwise.
    func give(_ stream: any ByteStream, to upstream: Upstream) {
        loop.assertInLoop()
        let state = state(upstream)
        state.inUse = max(0, state.inUse - 1)
        guard state.idle.count < min(ceiling, max(state.peak, state.previousPeak)) else {
            stream.abort()
            return
        }
        state.idle.append(Idle(stream: stream, since: loop.now))
        idleCount += 1
        if !pruneTimer.armed { pruneTimer.arm(after: pruneInterval) }
    }

    /// A connection that cannot serve again (failed, upgraded, told to close) is closed.
    func discard(_ stream: any ByteStream, of upstream: Upstream) {
        loop.assertInLoop()
        stream.abort()
        if let state = upstreams[upstream] { state.inUse = max(0, state.inUse - 1) }
    }

    /// Half the idle limit (at least 100 ms): a connection is closed at most 1.5 × the limit
    /// after its last use.
    private var pruneInterval: Duration { .nanoseconds(Int64(max(idleLimit / 2, 100_000_000))) }

    /// Closes connections idle past the limit, and those the upstream has closed meanwhile;
    /// starts a new window for each upstream's need.
    private func prune() {
        let now = loop.now
        for state in upstreams.values {
            state.previousPeak = state.peak
            state.peak = state.inUse
            guard !state.idle.isEmpty else { continue }
            state.idle.removeAll { connection in
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
