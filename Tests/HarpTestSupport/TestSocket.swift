import Glibc
import HarpKernel
import Synchronization

/// Blocking loopback sockets for tests, with a receive timeout so a bug fails a test
/// instead of hanging it.
public final class TestSocket {
    public let fd: Int32

    public init(connectingTo address: SocketAddress, timeoutSeconds: Int = 30) throws {
        let fd = try Socket.stream(family: address.family, blocking: true)
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let storage = UnsafeMutableRawPointer.allocate(byteCount: 128, alignment: 8)
        defer { storage.deallocate() }
        let length = address.write(to: storage)
        guard Glibc.connect(fd, storage.assumingMemoryBound(to: sockaddr.self), length) == 0 else {
            let error = errno
            Glibc.close(fd)
            throw TestFailure("connect \(address): \(String(cString: strerror(error)))")
        }
        self.fd = fd
    }


    deinit { Glibc.close(fd) }

    public func send(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let sent = Glibc.send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            guard sent > 0 else { throw TestFailure("send: \(String(cString: strerror(errno)))") }
            offset += sent
        }
    }

    public func send(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try send($0) } }

    /// Reads until end-of-stream or `limit` bytes.
    public func receiveAll(limit: Int = .max) throws -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while out.count < limit {
            let count = Glibc.recv(fd, &chunk, min(chunk.count, limit - out.count), 0)
            if count == 0 { break }
            guard count > 0 else { throw TestFailure("recv: \(String(cString: strerror(errno)))") }
            out.append(contentsOf: chunk[0..<count])
        }
        return out
    }

    /// Reads exactly `count` bytes.
    public func receive(exactly count: Int) throws -> [UInt8] {
        let bytes = try receiveAll(limit: count)
        guard bytes.count == count else { throw TestFailure("expected \(count) bytes, got \(bytes.count) before EOF") }
        return bytes
    }

    /// Reads until the received text contains `marker` (or EOF); returns all of it.
    public func receiveUntil(_ marker: String) throws -> String {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while !String(decoding: out, as: UTF8.self).contains(marker) {
            let count = Glibc.recv(fd, &chunk, chunk.count, 0)
            guard count > 0 else { break }
            out.append(contentsOf: chunk[0..<count])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// One recv: returns 0 at end-of-stream, or -errno.
    public func receiveOnce(into buffer: inout [UInt8]) -> Int {
        let count = buffer.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
        return count >= 0 ? count : -Int(errno)
    }

    public func shutdownWrite() { Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Makes the eventual close send RST instead of FIN (SO_LINGER 0).
    public func abortOnClose() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    }
}

/// A free loopback TCP port (bound and released; good enough for tests on one machine).
/// A loopback port nobody listens on now, from below the kernel's ephemeral range
/// (32768–60999 by default): a port the kernel picks for "port 0" can be handed out again at
/// once as the source port of another test's outgoing connection (the flood tests open
/// thousands), and then harp's bind fails with EADDRINUSE. A port is handed out once per test
/// process: two calls before either port is bound could otherwise return the same port, and
/// one harp would be given it twice (its admin and its storage listener).
public func freePort() -> UInt16 {
    for _ in 0..<1000 {
        let port = UInt16.random(in: 20000...32000)
        // 23000-23099 stay free for tests that use HaRP's fixed ExApp ports.
        if (23000..<23100).contains(port) { continue }
        guard handedOut.withLock({ $0.insert(port).inserted }) else { continue }
        if let fd = try? Socket.listen(on: loopback(port), reusePort: false) {
            close(fd)
            return port
        }
    }
    let fd = try! Socket.listen(on: loopback(0), reusePort: false)
    defer { close(fd) }
    return SocketAddress.local(of: fd)!.port!
}

private let handedOut = Mutex<Set<UInt16>>([])

public func loopback(_ port: UInt16) -> SocketAddress { .ipv4(host: UInt32(0x7f000001).bigEndian, port: port) }

/// A loopback port that refuses connections for as long as this object lives: a socket bound
/// to it that never listens. (A port from `freePort()` could be taken by a test running
/// alongside before the refusal is observed.)
public final class RefusingPort: @unchecked Sendable {
    // @unchecked Sendable: immutable after init.
    private let fd: Int32
    public let port: UInt16

    public init() throws {
        let fd = try Socket.stream(family: AF_INET)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f000001).bigEndian
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        port = SocketAddress.local(of: fd)!.port!
    }

    deinit { close(fd) }
}

/// Makes `fd` non-blocking, as every socket harp's loops touch is (a relay asserts it), and
/// returns it: for the end of a `socketPair()` that a test hands to a loop.
@discardableResult
public func loopSide(_ fd: Int32) -> Int32 {
    let flags = fcntl(fd, F_GETFL)
    _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    return fd
}

/// A connected pair of blocking Unix stream sockets (see `loopSide` for the end a loop uses).
public func socketPair() -> (Int32, Int32) {
    var fds: [Int32] = [0, 0]
    socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds)
    return (fds[0], fds[1])
}
