import Foundation
import Glibc
import HarpKernel
import Synchronization

/// The one accept loop of the test origins: a blocking listener whose thread hands each
/// connection to a thread of its own, independent of harp's kernel so that a kernel bug cannot
/// hide on both ends. `stop` closes the listener; connections being served go on.
public final class TestListener: Sendable {
    public let address: SocketAddress
    /// Connections accepted so far.
    public let accepted = Atomic<Int>(0)
    private let fd: Int32
    private let stopping = Atomic<Bool>(false)

    /// Listens on `address` (loopback, an ephemeral port, unless given; a Unix socket path is
    /// replaced).
    public init(on address: SocketAddress = loopback(0)) throws {
        if case .unix(let path) = address { unlink(path) }
        fd = try Socket.listen(on: address, reusePort: false, blocking: true)
        self.address = SocketAddress.local(of: fd) ?? address
    }

    /// Starts accepting: `serve` runs on a new thread per connection and owns the descriptor
    /// (closes it). While `admit` says no, connections are closed as they come.
    public func start(admit: @escaping @Sendable () -> Bool = { true }, serve: @escaping @Sendable (Int32) -> Void) {
        Thread { [self] in
            while !stopping.load(ordering: .relaxed) {
                let client = Glibc.accept(fd, nil, nil)
                guard client >= 0 else {
                    if errno == EINTR { continue }
                    return
                }
                guard admit(), !stopping.load(ordering: .relaxed) else {
                    close(client)
                    continue
                }
                accepted.add(1, ordering: .relaxed)
                Thread { serve(client) }.start()
            }
        }.start()
    }

    public func stop() {
        stopping.store(true, ordering: .relaxed)
        Glibc.shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }
}
