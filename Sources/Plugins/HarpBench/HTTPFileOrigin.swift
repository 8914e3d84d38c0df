import BlockExchange
import CShims
import Foundation
import Glibc
import HarpKernel

/// The single-source baseline's two ends: an origin that serves one file to each GET, paced
/// by a token bucket at the seeders' cap (sendfile in 256 KiB steps), and a client that
/// downloads it into a file, hashing as it goes. Plain blocking sockets on threads of their
/// own: this is the benchmark's fixture, not harp.
final class HTTPFileOrigin: @unchecked Sendable {
    // @unchecked Sendable: constants only, read by the accept thread.
    let port: UInt16
    private let listener: Int32
    private let file: String
    private let rate: Int

    init(file: String, rate: Int) throws {
        self.file = file
        self.rate = rate
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        self.listener = listener
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, length) == 0 && getsockname(listener, $0, &length) == 0 && listen(listener, 16) == 0
            }
        }
        guard bound else { throw TransferBench.BenchFailure("the HTTP origin cannot listen: \(String(cString: strerror(errno)))") }
        port = UInt16(bigEndian: address.sin_port)
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { return }
            Thread.detachNewThread { [self] in serve(client) }
        }
    }

    private func serve(_ client: Int32) {
        defer { close(client) }
        var head: [UInt8] = []
        var byte = [UInt8](repeating: 0, count: 4096)
        while !head.suffix(4).elementsEqual([13, 10, 13, 10]) {
            let count = recv(client, &byte, 1, 0)
            guard count == 1 else { return }
            head.append(byte[0])
        }
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var info = stat()
        fstat(fd, &info)
        let size = Int(info.st_size)
        let response = Array("HTTP/1.1 200 OK\r\nContent-Length: \(size)\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n".utf8)
        guard send(client, response, response.count, Int32(MSG_NOSIGNAL)) == response.count else { return }
        let bucket = TokenBucket(bytesPerSecond: rate)
        var offset: off_t = 0
        while Int(offset) < size {
            let step = min(256 << 10, size - Int(offset))
            if let wait = bucket?.reserve(step), wait > .zero { usleep(useconds_t(wait.nanoseconds / 1000)) }
            let sent = sendfile(client, fd, &offset, step)
            if sent <= 0 { return }
        }
    }

    /// GETs the file through `port` into `out` (written, hashed, synced): seconds and hash.
    static func download(port: UInt16, to out: String, expected: Int, progress: (Int, Int) -> Void) throws -> (Double, String) {
        let started = Date()
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = port.bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard connected else { throw TransferBench.BenchFailure("cannot connect to harp's proxy") }
        let request = Array("GET /file HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".utf8)
        guard send(fd, request, request.count, Int32(MSG_NOSIGNAL)) == request.count else { throw TransferBench.BenchFailure("send failed") }
        let output = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard output >= 0 else { throw TransferBench.BenchFailure("cannot create \(out)") }
        defer { close(output) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { buffer.deallocate() }
        let digest = SHA256()
        var inHead = true, head: [UInt8] = [], body = 0
        var meter = RateMeter(), lastDraw = Date()
        while true {
            let count = recv(fd, buffer.baseAddress, buffer.count, 0)
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            var bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<count])
            if inHead {
                head += bytes
                guard let end = head.firstRange(of: [13, 10, 13, 10]) else { continue }
                guard head.starts(with: Array("HTTP/1.1 200".utf8)) else { throw TransferBench.BenchFailure("harp's proxy answered \(String(decoding: head.prefix(12), as: UTF8.self))") }
                inHead = false
                let rest = Array(head[end.upperBound...])
                head = rest
                bytes = UnsafeRawBufferPointer(start: nil, count: 0)
                if !rest.isEmpty {
                    digest.update(rest)
                    guard write(output, rest, rest.count) == rest.count else { throw TransferBench.BenchFailure("cannot write \(out)") }
                    body += rest.count
                }
            }
            if bytes.count > 0 {
                digest.update(bytes)
                guard write(output, bytes.baseAddress, bytes.count) == bytes.count else { throw TransferBench.BenchFailure("cannot write \(out)") }
                body += bytes.count
                meter.add(bytes.count)
            }
            if Date().timeIntervalSince(lastDraw) > 0.2 {
                progress(body, Int(meter.current()))
                lastDraw = Date()
            }
        }
        guard body == expected else { throw TransferBench.BenchFailure("the HTTP download ended after \(body) of \(expected) bytes") }
        fsync(output)
        return (Date().timeIntervalSince(started), digest.finalizeHex())
    }
}
