import Glibc
import HarpKernel

/// Idle keep-alive connections to upstreams, one pool per loop (connections never change
/// loops, so no lock). Stale connections are noticed when taken: a peek that does not say
/// "nothing to read yet" means the upstream closed it or sent junk, and it is discarded.
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

    private var idle: [Upstream: IdleList] = [:]
    private let maxPerUpstream: Int
    private let idleLimit: UInt64

    init(maxPerUpstream: Int, idleTimeout: Duration) {
        self.maxPerUpstream = maxPerUpstream
        idleLimit = idleTimeout.nanoseconds
    }

    /// A live idle connection to `upstream`, most recently used first. The liveness peek
    /// (a syscall) is skipped for connections idle under a second: an upstream closing one
    /// that fast is rare, and an idempotent request is retried on a fresh connection anyway.
    /// (TLS connections are never peeked: a session ticket may legitimately be waiting.)
    func take(_ upstream: Upstream, now: UInt64) -> (any ByteStream)? {
        guard let list = idle[upstream] else { return nil }
        while let connection = list.connections.popLast() {
            let idleFor = now &- connection.since
            let fresh = idleFor < 1_000_000_000 || !connection.stream.isPlain || Self.isQuiet(connection.stream.fd)
            if idleFor <= idleLimit && fresh { return connection.stream }
            close(connection.stream.fd)
        }
        return nil
    }

    func give(_ stream: any ByteStream, to upstream: Upstream, now: UInt64) {
        guard maxPerUpstream > 0 else {
            close(stream.fd)
            return
        }
        let list: IdleList
        if let existing = idle[upstream] {
            list = existing
        } else {
            list = IdleList()
            idle[upstream] = list
        }
        Self.keep(Idle(stream: stream, since: now), in: &list.connections, limit: maxPerUpstream, idleLimit: idleLimit)
    }

    private static func keep(_ connection: Idle, in list: inout [Idle], limit: Int, idleLimit: UInt64) {
        // Evict any that outlived the idle limit, and the oldest when full.
        let now = connection.since
        if list.contains(where: { now &- $0.since > idleLimit }) {
            list.removeAll { stale in
                let expired = now &- stale.since > idleLimit
                if expired { close(stale.stream.fd) }
                return expired
            }
        }
        if list.count >= limit, let oldest = list.first {
            close(oldest.stream.fd)
            list.removeFirst()
        }
        list.append(connection)
    }

    /// An idle keep-alive connection must have nothing to read: EOF or bytes mean it is done.
    private static func isQuiet(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        let result = recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        return result < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)
    }
}
