import CShims
import Glibc
import Logging

/// Accepts connections on one loop with a multishot accept: one submission yields a
/// completion per connection until the kernel ends the series (then it is re-armed).
/// Each accepted descriptor goes to `onAccept` on the loop thread.
public final class Listener: IOCompletion, @unchecked Sendable {
    // @unchecked Sendable: all state is confined to `loop`'s thread; other threads only hand
    // the listener to `loop.spawn` closures.
    public let loop: EventLoop
    public let fd: Int32
    public let address: SocketAddress
    private let onAccept: (Int32) -> Void
    private let logger: Logger
    private var stopping = false
    private var armed = false
    private var backingOff = false
    private lazy var backoff = Backoff(listener: self)
    /// Held from the first arm until the socket is closed: the ring may still hold this
    /// record's address (an accept or back-off completion after `stop`), whoever else lets go.
    private var alive: Unmanaged<Listener>?
    /// `close()` callers waiting for the socket to close; `closed` once it has.
    private var closeWaiters: [CheckedContinuation<Void, Never>] = []
    private var closed = false

    init(loop: EventLoop, fd: Int32, address: SocketAddress, logger: Logger, onAccept: @escaping (Int32) -> Void) {
        self.loop = loop
        self.fd = fd
        self.address = address
        self.logger = logger
        self.onAccept = onAccept
    }

    func arm() {
        loop.assertInLoop()
        assert(!armed, "one accept series at a time")
        armed = true
        if alive == nil { alive = Unmanaged.passRetained(self) }
        loop.submit(self) { io_uring_prep_multishot_accept($0, fd, nil, nil, Socket.acceptFlags) }
    }

    public override func complete(result: Int32, flags: UInt32) {
        if result >= 0 {
            if stopping { Glibc.close(result) } else { onAccept(result) }
        } else if result != -ECANCELED && !stopping {
            // EMFILE/ENFILE/ENOBUFS: the series has ended; wait a little so that a full fd
            // table does not turn into a busy loop, then accept again.
            logger.error("accept failed", metadata: ["listen": "\(address)", "error": "\(String(cString: strerror(-result)))"])
        }
        guard flags & IORING_CQE_F_MORE == 0 else { return }
        armed = false
        if stopping {
            finish()
        } else if result < 0 {
            backingOff = true
            backoff.arm()
        } else {
            arm()
        }
    }

    /// Closes the socket and lets go of the listener; nothing of it is in flight any more.
    private func finish() {
        Glibc.close(fd)
        closed = true
        for waiter in closeWaiters { waiter.resume() }
        closeWaiters.removeAll()
        alive?.release()
        alive = nil
    }

    /// Stops accepting (loop thread only) and returns once the socket is closed: the accept
    /// series ends with the cancel's completion, a turn of the loop later, and until then the
    /// port is still bound (a client restarted at once was refused it; FRPInteropTests saw it).
    func close() async {
        loop.assertInLoop()
        stop()
        guard !closed else { return }
        await withCheckedContinuation { closeWaiters.append($0) }
    }

    /// Stops accepting (loop thread only); the socket closes once the accept series has ended.
    private func stop() {
        guard !stopping else { return }
        stopping = true
        if armed {
            loop.cancel(self)
        } else if backingOff {
            loop.cancel(backoff)
        } else {
            finish()
        }
    }

    private final class Backoff: IOCompletion, @unchecked Sendable {
        // @unchecked Sendable: restated from IOCompletion; used only on its loop's thread.
        unowned let listener: Listener
        let timespec = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: 1)
        init(listener: Listener) {
            self.listener = listener
            timespec.initialize(to: __kernel_timespec(.milliseconds(100)))
        }
        deinit { timespec.deallocate() }
        func arm() { listener.loop.submit(self) { io_uring_prep_timeout($0, timespec, 0, 0) } }
        override func complete(result: Int32, flags: UInt32) {
            listener.backingOff = false
            if listener.stopping { listener.finish() } else { listener.arm() }
        }
    }
}

/// One listen address served by every loop: a socket per loop bound with SO_REUSEPORT, so a
/// connection lives and dies on the loop that accepted it.
public final class ListenerGroup: Sendable {
    public let address: SocketAddress
    /// The address actually bound (differs from `address` when the port was 0).
    public let boundAddress: SocketAddress
    private let listeners: [Listener]

    /// Binds now (so that EADDRINUSE is a startup error) and starts accepting on each loop.
    /// `onAccept` runs on the accepting loop's thread with the new descriptor.
    public init(address: SocketAddress, loops: [EventLoop], logger: Logger,
                onAccept: @escaping @Sendable (Int32, EventLoop) -> Void) throws(Socket.Failure) {
        self.address = address
        var fds: [Int32] = []
        var bindTo = address
        if address.family != AF_UNIX && address.port != 0 { try Socket.checkUnclaimed(address) }
        do {
            for _ in loops {
                let fd = try Socket.listen(on: bindTo, reusePort: address.family != AF_UNIX)
                fds.append(fd)
                // Port 0: the first socket picks the port, the others join it.
                if fds.count == 1, address.port == 0, let local = SocketAddress.local(of: fd) { bindTo = local }
                if address.family == AF_UNIX { break }
            }
        } catch {
            fds.forEach { _ = Glibc.close($0) }
            throw error
        }
        boundAddress = bindTo
        listeners = zip(loops, fds).map { loop, fd in
            Listener(loop: loop, fd: fd, address: address, logger: logger) { client in onAccept(client, loop) }
        }
        for listener in listeners {
            listener.loop.spawn { listener.arm() }
        }
    }

    /// Stops accepting on every loop and waits until each socket is closed (its port free).
    public func stop() async {
        await withTaskGroup(of: Void.self) { group in
            for listener in listeners {
                group.addTask(executorPreference: listener.loop) { await listener.close() }
            }
        }
    }
}
