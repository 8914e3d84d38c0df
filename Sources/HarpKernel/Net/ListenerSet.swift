import Logging
import Synchronization

/// A plugin's listeners: each address bound on the plugin's loops (SO_REUSEPORT), each
/// accepted socket served as a counted connection task (`EventLoop.serveConnection`, which a
/// graceful shutdown waits for), and one `stop()` for all of them.
public final class ListenerSet: Sendable {
    private let loops: [EventLoop]
    private let logger: Logger
    private let groups = Mutex<[ListenerGroup]>([])

    public init(loops: [EventLoop], logger: Logger) {
        self.loops = loops
        self.logger = logger
    }

    /// Binds `address` now (EADDRINUSE — held by anyone, another harp too — is a startup
    /// error naming `key`, the configuration it came from) and serves each accepted socket
    /// with `serve` on the loop that accepted it. `loopCount` limits how many loops accept
    /// (an admin endpoint needs one). Returns the address actually bound.
    @discardableResult
    public func listen(on address: SocketAddress, key: String? = nil, loopCount: Int? = nil,
                       serve: @escaping @Sendable (SocketStream) async -> Void) throws(Socket.Failure) -> SocketAddress {
        let serving = loopCount.map { Array(loops.prefix($0)) } ?? loops
        let group: ListenerGroup
        do {
            group = try ListenerGroup(address: address, loops: serving, logger: logger) { fd, loop in
                loop.serveConnection { await serve(SocketStream(loop: loop, fd: fd)) }
            }
        } catch {
            var failure = error
            failure.key = key
            throw failure
        }
        groups.withLock { $0.append(group) }
        return group.boundAddress
    }

    /// The bound addresses, in the order `listen` was called.
    public var boundAddresses: [SocketAddress] { groups.withLock { $0.map(\.boundAddress) } }

    /// Stops accepting everywhere and returns once every listening socket is closed; open
    /// connections go on.
    public func stop() async {
        for group in groups.withLock({ $0 }) { await group.stop() }
    }
}
