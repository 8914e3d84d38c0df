import Foundation
import Glibc
import HarpKernel
import Synchronization

/// Upstream servers for tests, each on its own thread with blocking sockets, independent of
/// harp's kernel so that a kernel bug cannot hide on both ends.
public final class EchoServer: Sendable {
    public let address: SocketAddress
    private let listener: TestListener
    /// Connections accepted so far.
    public var accepted: Int { listener.accepted.load(ordering: .relaxed) }

    /// Echoes every byte back and closes after the client's FIN. `unixPath` serves on a Unix socket.
    public init(unixPath: String? = nil) throws {
        listener = try TestListener(on: unixPath.map { .unix(path: $0) } ?? loopback(0))
        address = listener.address
        listener.start(serve: Self.echo)
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

    public func stop() { listener.stop() }
}

/// Reads everything a client sends, hashes it, and answers with the hex SHA-256 and the
/// byte count after the client's FIN.
public final class HashingSink: Sendable {
    public let address: SocketAddress
    private let listener: TestListener

    public init() throws {
        listener = try TestListener()
        address = listener.address
        listener.start(serve: Self.serve)
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

    public func stop() { listener.stop() }
}

/// Sends a steady stream of bytes to whoever connects until the peer goes away.
public final class StreamingSource: Sendable {
    public let address: SocketAddress
    private let listener: TestListener

    public init() throws {
        listener = try TestListener()
        address = listener.address
        listener.start { client in
            let chunk = [UInt8](repeating: 0x5a, count: 65536)
            while chunk.withUnsafeBytes({ Glibc.send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) > 0 {}
            close(client)
        }
    }

    public func stop() { listener.stop() }
}
