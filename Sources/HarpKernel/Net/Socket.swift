import CShims
import Glibc

/// Thin, typed wrappers over the socket syscalls the kernel makes outside the ring
/// (setup work that happens once per listener or connection, not per I/O operation).
public enum Socket {
    public struct Failure: Error, CustomStringConvertible {
        public let operation: String
        public let address: SocketAddress?
        public let errno: Int32
        /// The configuration key the address came from, when known (`frp.listen (HP_FRP_ADDRESS)`).
        public var key: String?
        public var description: String {
            let target = address.map { " \($0)" } ?? ""
            let owner = key.map { "\($0): " } ?? ""
            let hint = operation == "bind" && errno == EADDRINUSE ? " (another process, or another listener of this one, holds it)" : ""
            return "\(owner)\(operation)\(target): \(String(cString: strerror(errno)))\(hint)"
        }
    }

    /// A new stream socket for `family`, close-on-exec and non-blocking: a loop thread never
    /// waits inside a syscall on a socket (the ring waits for it), so every socket a loop
    /// touches is non-blocking from the moment it exists. `blocking` is for threads that
    /// are not loops (test peers, commands).
    public static func stream(family: Int32, blocking: Bool = false) throws(Failure) -> Int32 {
        let flags = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | (blocking ? 0 : Int32(SOCK_NONBLOCK.rawValue))
        let fd = socket(family, flags, 0)
        guard fd >= 0 else { throw Failure(operation: "socket", address: nil, errno: errno) }
        return fd
    }

    /// A listening socket on `address`. With `reusePort`, every loop binds its own socket to
    /// the same address and the kernel spreads connections across them (SO_REUSEPORT).
    /// Non-blocking like every loop socket unless `blocking` (a test origin's accept thread).
    public static func listen(on address: SocketAddress, reusePort: Bool, backlog: Int32 = 4096,
                              blocking: Bool = false) throws(Failure) -> Int32 {
        let fd = try stream(family: address.family, blocking: blocking)
        var one: Int32 = 1
        if address.family != AF_UNIX {
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            if reusePort {
                setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size))
            }
        }
        let storage = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<sockaddr_storage>.size, alignment: 8)
        defer { storage.deallocate() }
        let length = address.write(to: storage)
        guard bind(fd, storage.assumingMemoryBound(to: sockaddr.self), length) == 0 else {
            let error = errno
            Glibc.close(fd)
            throw Failure(operation: "bind", address: address, errno: error)
        }
        guard Glibc.listen(fd, backlog) == 0 else {
            let error = errno
            Glibc.close(fd)
            throw Failure(operation: "listen", address: address, errno: error)
        }
        return fd
    }

    /// Fails with EADDRINUSE when any socket — another process's too — is bound to `address`.
    /// Listeners bind one SO_REUSEPORT socket per loop, and SO_REUSEPORT lets a second process
    /// of the same user join them silently (a second harp would take half the connections);
    /// a probe bound without it is refused by any existing listener on the address.
    public static func checkUnclaimed(_ address: SocketAddress) throws(Failure) {
        let fd = try stream(family: address.family)
        defer { Glibc.close(fd) }
        var one: Int32 = 1
        // SO_REUSEADDR only lets the probe past connections in TIME_WAIT, never past a listener.
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let storage = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<sockaddr_storage>.size, alignment: 8)
        defer { storage.deallocate() }
        let length = address.write(to: storage)
        guard bind(fd, storage.assumingMemoryBound(to: sockaddr.self), length) == 0 else {
            throw Failure(operation: "bind", address: address, errno: errno)
        }
    }

    /// Disables Nagle: a proxy must not add latency to small writes. (On a Unix socket the
    /// option does not exist; the call then fails harmlessly, so callers need not check.)
    public static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// True when `fd` is non-blocking (debug checks of the loop rule above).
    public static func isNonBlocking(_ fd: Int32) -> Bool {
        let flags = fcntl(fd, F_GETFL)
        return flags >= 0 && flags & O_NONBLOCK != 0
    }

    /// The flags every socket accepted on a loop gets: close-on-exec and non-blocking.
    static let acceptFlags = Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
}
