import CShims
import Glibc

/// Thin, typed wrappers over the socket syscalls the kernel makes outside the ring
/// (setup work that happens once per listener or connection, not per I/O operation).
public enum Socket {
    public struct Failure: Error, CustomStringConvertible {
        public let operation: String
        public let address: SocketAddress?
        public let errno: Int32
        public var description: String {
            let target = address.map { " \($0)" } ?? ""
            return "\(operation)\(target): \(String(cString: strerror(errno)))"
        }
    }

    /// A new stream socket for `family`, close-on-exec.
    public static func stream(family: Int32) throws(Failure) -> Int32 {
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(operation: "socket", address: nil, errno: errno) }
        return fd
    }

    /// A listening socket on `address`. With `reusePort`, every loop binds its own socket to
    /// the same address and the kernel spreads connections across them (SO_REUSEPORT).
    public static func listen(on address: SocketAddress, reusePort: Bool, backlog: Int32 = 4096) throws(Failure) -> Int32 {
        let fd = try stream(family: address.family)
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

    /// Disables Nagle: a proxy must not add latency to small writes. (On a Unix socket the
    /// option does not exist; the call then fails harmlessly, so callers need not check.)
    public static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    public static func setNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 && flags & O_NONBLOCK == 0 { _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
    }
}
