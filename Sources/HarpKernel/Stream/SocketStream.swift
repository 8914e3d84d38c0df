import CShims
import Glibc

/// A plain socket as a `ByteStream`, with its own completion records for each direction.
/// The stream owns the descriptor: `close()`/`abort()` close it, and after that every
/// operation fails with `-EBADF`. While an operation of this stream is still in flight the
/// close(2) waits for it to come back (abort's shutdown makes that immediate): a resubmission
/// inside the operation (a short send, EAGAIN) must never reach a number the kernel has
/// already handed to another connection.
public final class SocketStream: ByteStream, @unchecked Sendable {
    // @unchecked Sendable: used only on `loop`, which owns the socket.
    public let loop: EventLoop
    /// The socket, or -1 once the stream has been closed.
    public private(set) var fd: Int32
    /// Closed by the stream's owner while an operation was in flight: no new operation
    /// starts, and the last one to return closes the descriptor.
    private var closing = false
    let readIO = AsyncCompletion()
    let writeIO = AsyncCompletion()
    private var knownPeer: SocketAddress??

    public init(loop: EventLoop, fd: Int32) {
        self.loop = loop
        self.fd = fd
    }

    deinit {
        // A stream dropped without close (a task that ended early) still returns its socket.
        if fd >= 0 { Glibc.close(fd) }
    }

    public var spliceDescriptor: Int32? { isOpen ? fd : nil }

    /// Neither closed nor closing.
    public var isOpen: Bool { fd >= 0 && !closing }

    public var peer: SocketAddress? {
        if let knownPeer { return knownPeer }
        let address = fd >= 0 ? SocketAddress.peer(of: fd) : nil
        knownPeer = .some(address)
        return address
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration?, expectingWait: Bool) async -> Int {
        loop.assertInLoop()
        guard fd >= 0 && !closing else { return -Int(EBADF) }
        let result = Int(await loop.recv(fd, into: buffer, timeout: timeout, expectingWait: expectingWait, using: readIO))
        if closing { finishClosing() }
        return result
    }

    public func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration?) async -> Int32 {
        loop.assertInLoop()
        guard fd >= 0 && !closing else { return -EBADF }
        let result = await loop.sendAll(fd, bytes, timeout: timeout, using: writeIO)
        if closing { finishClosing() }
        return result
    }

    public func finishWriting() async {
        if fd >= 0 && !closing { shutdown(fd, Int32(SHUT_WR)) }
    }

    public func close() async { release() }

    public func abort() {
        guard fd >= 0 && !closing else { return }
        // shutdown first: an operation pending on the ring (a receive, a relay's poll) holds
        // the socket open past close(2), and only shutdown makes it return now.
        shutdown(fd, Int32(SHUT_RDWR))
        release()
    }

    private func release() {
        loop.assertInLoop()
        guard fd >= 0 && !closing else { return }
        if readIO.isPending || writeIO.isPending {
            closing = true  // the operation's task closes it when it returns
            return
        }
        Glibc.close(fd)
        fd = -1
    }

    private func finishClosing() {
        guard closing, !readIO.isPending, !writeIO.isPending else { return }
        closing = false
        Glibc.close(fd)
        fd = -1
    }

    /// An idle keep-alive socket must have nothing to read: EOF or bytes mean it is done.
    /// One `recv(MSG_PEEK | MSG_DONTWAIT)`.
    public func isQuietWhileIdle() -> Bool {
        guard fd >= 0 && !closing else { return false }
        var byte: UInt8 = 0
        let result = Glibc.recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        return result < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)
    }

    /// Waits until the socket is readable without reading (so no buffer is held meanwhile).
    /// Returns the poll result: > 0 readable (or closed), `-errno` on timeout or failure.
    public func waitReadable(timeout: Duration?) async -> Int32 {
        loop.assertInLoop()
        guard fd >= 0 && !closing else { return -EBADF }
        let result = await loop.perform(readIO, timeout: timeout) { io_uring_prep_poll_add($0, fd, UInt32(POLLIN)) }
        if closing { finishClosing() }
        return result
    }

    /// Connects a new socket to `address` on `loop`. Throws the errno (`ETIMEDOUT` after
    /// `timeout`); the socket is closed on failure.
    public static func connect(to address: SocketAddress, on loop: EventLoop, timeout: Duration?) async throws(DialError) -> SocketStream {
        let fd: Int32
        do {
            fd = try Socket.stream(family: address.family)
        } catch {
            throw .socket(error)
        }
        let stream = SocketStream(loop: loop, fd: fd)
        let result = await loop.connect(fd, to: address, timeout: timeout, using: stream.writeIO)
        guard result == 0 else {
            stream.abort()
            throw .connect(address: address, errno: -result)
        }
        Socket.setNoDelay(fd)
        return stream
    }
}
