import Foundation
import Glibc
import HarpKernel
import Synchronization

/// Upstream servers for tests, each on its own thread with blocking sockets, independent of
/// harp's kernel so that a kernel bug cannot hide on both ends.
public final class EchoServer: @unchecked Sendable {
    // @unchecked Sendable: `listener` is immutable; counters are atomics.
    public let address: SocketAddress
    private let listener: Int32
    public let accepted = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)

    /// Echoes every byte back and closes after the client's FIN. `unixPath` serves on a Unix socket.
    public init(unixPath: String? = nil) throws {
        let bindTo: SocketAddress = unixPath.map { .unix(path: $0) } ?? loopback(0)
        if let unixPath { unlink(unixPath) }
        listener = try Socket.listen(on: bindTo, reusePort: false, blocking: true)
        address = SocketAddress.local(of: listener) ?? bindTo
        let thread = Thread { [self] in acceptLoop() }
        thread.start()
    }

    private func acceptLoop() {
        while !stopping.load(ordering: .relaxed) {
            let client = Glibc.accept(listener, nil, nil)
            guard client >= 0 else { if errno == EINTR { continue } else { return } }
            accepted.add(1, ordering: .relaxed)
            Thread { Self.echo(client) }.start()
        }
    }

    private static func echo(_ fd: Int32) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count <= 0 { break }
            var offset = 0
            while offset < count {
                let sent = buffer.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, count - offset, Int32(MSG_NOSIGNAL)) }
                if sent <= 0 { close(fd); return }
                offset += sent
            }
        }
        close(fd)
    }

    public func stop() {
        stopping.store(true, ordering: .relaxed)
        Glibc.shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }
}

/// Reads everything a client sends, hashes it, and answers with the hex SHA-256 and the
/// byte count after the client's FIN.
public final class HashingSink: @unchecked Sendable {
    // @unchecked Sendable: immutable after init; work happens on its own threads.
    public let address: SocketAddress
    private let listener: Int32

    public init() throws {
        listener = try Socket.listen(on: loopback(0), reusePort: false, blocking: true)
        address = SocketAddress.local(of: listener)!
        Thread { [listener] in
            while true {
                let client = Glibc.accept(listener, nil, nil)
                guard client >= 0 else { return }
                Thread { Self.serve(client) }.start()
            }
        }.start()
    }

    private static func serve(_ fd: Int32) {
        let hash = SHA256()
        var total = 0
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let count = recv(fd, buffer.baseAddress, buffer.count, 0)
            if count <= 0 { break }
            hash.update(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            total += count
        }
        let reply = Array("\(hash.finalizeHex()) \(total)\n".utf8)
        _ = reply.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        close(fd)
    }

    public func stop() {
        Glibc.shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }
}

/// Sends a steady stream of bytes to whoever connects until the peer goes away.
public final class StreamingSource: @unchecked Sendable {
    // @unchecked Sendable: immutable after init; work happens on its own threads.
    public let address: SocketAddress
    private let listener: Int32

    public init() throws {
        listener = try Socket.listen(on: loopback(0), reusePort: false, blocking: true)
        address = SocketAddress.local(of: listener)!
        Thread { [listener] in
            while true {
                let client = Glibc.accept(listener, nil, nil)
                guard client >= 0 else { return }
                Thread {
                    let chunk = [UInt8](repeating: 0x5a, count: 65536)
                    while chunk.withUnsafeBytes({ Glibc.send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) > 0 {}
                    close(client)
                }.start()
            }
        }.start()
    }

    public func stop() {
        Glibc.shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }
}
