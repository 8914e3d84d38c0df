import Foundation
import Glibc
import HarpKernel
import Synchronization

/// A deliberately plain HTTP/1.1 origin (thread per connection, lenient parsing, like many
/// real backends): it counts the requests it sees, so a smuggled second request shows up.
///
/// - `/hash`: answers `<sha256> <bytes>` of the request body (Content-Length or chunked).
/// - `/headers`: answers the request head it received, verbatim.
/// - `/chunked/<n>`: answers n bytes of 'x' in chunks of 1000.
/// - `/slow/<ms>`: waits, then answers "slow".
/// - `/status/<code>`: answers with that status (and the request head as body).
/// - `/drip/<n>`: promises n bytes and sends one every 300 ms (a server that is never idle
///   long enough for a per-read timeout, and never done).
/// - `/split/<ms>`: sends the head and half of a 10-byte body, waits, then the rest.
/// - `/short`: promises 10 bytes, sends 5 and closes.
/// - `/close`: answers with `Connection: close` and no length (body until close).
/// - `/hints-then-close`: answers 103 Early Hints, then closes.
/// - `/drop-once`: the first such request is read whole and its connection closed unanswered
///   (an origin whose keep-alive timeout fired as the request came); later ones as `/hash`.
/// - any target with `?then-close`: answered as usual (keep-alive promised), then the
///   connection is closed at once — an origin that drops every kept-alive connection.
/// - anything else: "ok".
///
/// With `keepAliveTimeout`, a connection idle that long between requests is closed (a
/// keep-alive timeout, optionally with random jitter of ± `jitter`).
public final class HTTPTestOrigin: @unchecked Sendable {
    // @unchecked Sendable: counters are atomics; the rest is immutable after init.
    public let address: SocketAddress
    private let listener: TestListener
    /// Connections accepted so far.
    public var connections: Int { listener.accepted.load(ordering: .relaxed) }
    /// Connections open now (the peer has not closed them, nor has the origin).
    public let open = Atomic<Int>(0)
    public let requests = Atomic<Int>(0)
    private let lastHeads = Mutex<[String]>([])
    private let dropped = Atomic<Bool>(false)

    let keepAliveTimeout: Double?
    let jitter: Double

    public init(keepAliveTimeout: Double? = nil, jitter: Double = 0) throws {
        self.keepAliveTimeout = keepAliveTimeout
        self.jitter = jitter
        listener = try TestListener()
        address = listener.address
        listener.start { [self] in serve($0) }
    }

    public var heads: [String] { lastHeads.withLock { $0 } }

    public func stop() { listener.stop() }

    private func serve(_ fd: Int32) {
        open.add(1, ordering: .relaxed)
        defer {
            close(fd)
            open.subtract(1, ordering: .relaxed)
        }
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        func fill() -> Bool {
            let count = recv(fd, &chunk, chunk.count, 0)
            guard count > 0 else { return false }
            buffer.append(contentsOf: chunk[0..<count])
            return true
        }
        var answered = 0
        while true {
            if let keepAliveTimeout, answered > 0, buffer.isEmpty {
                let wait = keepAliveTimeout + Double.random(in: -jitter...jitter)
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&pfd, 1, Int32(max(0, wait) * 1000)) == 0 { return }
            }
            answered += 1
            var headEnd: Int?
            while headEnd == nil {
                headEnd = buffer.firstRange(of: Array("\r\n\r\n".utf8))?.upperBound
                if headEnd == nil && !fill() { return }
            }
            let headText = String(decoding: buffer[0..<headEnd!], as: UTF8.self)
            buffer.removeFirst(headEnd!)
            requests.add(1, ordering: .relaxed)
            lastHeads.withLock { $0.append(headText) }
            let lines = headText.components(separatedBy: "\r\n")
            let target = lines[0].split(separator: " ").dropFirst().first.map(String.init) ?? "/"
            func header(_ name: String) -> String? {
                lines.dropFirst().first { $0.lowercased().hasPrefix(name.lowercased() + ":") }
                    .map { String($0.dropFirst(name.count + 1)).trimmingCharacters(in: .whitespaces) }
            }
            let hash = SHA256()
            var bodyBytes = 0
            if let length = header("Content-Length").flatMap(Int.init) {
                // Hash as it arrives: bodies may be a gigabyte.
                while bodyBytes < length {
                    if buffer.isEmpty && !fill() { return }
                    let take = min(buffer.count, length - bodyBytes)
                    buffer.withUnsafeBytes { hash.update(UnsafeRawBufferPointer(rebasing: $0[0..<take])) }
                    buffer.removeFirst(take)
                    bodyBytes += take
                }
            } else if header("Transfer-Encoding")?.lowercased() == "chunked" {
                while true {
                    var lineEnd: Int?
                    while lineEnd == nil {
                        lineEnd = buffer.firstRange(of: Array("\r\n".utf8))?.lowerBound
                        if lineEnd == nil && !fill() { return }
                    }
                    let sizeText = String(decoding: buffer[0..<lineEnd!], as: UTF8.self).split(separator: ";").first ?? ""
                    guard let size = Int(sizeText, radix: 16) else { return }
                    buffer.removeFirst(lineEnd! + 2)
                    if size == 0 {
                        while buffer.firstRange(of: Array("\r\n".utf8)) == nil { if !fill() { return } }
                        // Skip trailers up to the empty line.
                        while let end = buffer.firstRange(of: Array("\r\n".utf8)) {
                            let empty = end.lowerBound == 0
                            buffer.removeFirst(end.upperBound)
                            if empty { break }
                            while buffer.firstRange(of: Array("\r\n".utf8)) == nil { if !fill() { return } }
                        }
                        break
                    }
                    while buffer.count < size + 2 { if !fill() { return } }
                    hash.update(Array(buffer[0..<size]))
                    bodyBytes += size
                    buffer.removeFirst(size + 2)
                }
            }
            var response: [UInt8]
            var closeAfter = false
            if target.hasPrefix("/drop-once"), !dropped.exchange(true, ordering: .relaxed) {
                return
            } else if target.hasPrefix("/hash") || target.hasPrefix("/drop-once") {
                response = Self.response("\(hash.finalizeHex()) \(bodyBytes)")
            } else if target.hasPrefix("/headers") {
                response = Self.response(headText)
            } else if target.hasPrefix("/chunked/"), let count = Int(target.dropFirst(9)) {
                var out = Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
                var left = count
                while left > 0 {
                    let size = min(1000, left)
                    out += Array("\(String(size, radix: 16));ext=1\r\n".utf8) + [UInt8](repeating: 0x78, count: size) + Array("\r\n".utf8)
                    left -= size
                }
                out += Array("0\r\nX-Trailer: done\r\n\r\n".utf8)
                response = out
            } else if target.hasPrefix("/sse/"), let events = Int(target.dropFirst(5)) {
                // Server-sent events: one chunk every 200 ms; the whole stream outlasts short
                // idle timeouts while never being idle for long.
                var head = Array("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
                for index in 0..<events {
                    let event = Array("data: \(index)\n\n".utf8)
                    head += Array("\(String(event.count, radix: 16))\r\n".utf8) + event + Array("\r\n".utf8)
                    if Self.sendAll(fd, head) == false { return }
                    head = []
                    usleep(200_000)
                }
                response = Array("0\r\n\r\n".utf8)
            } else if target.hasPrefix("/drip/"), let count = Int(target.dropFirst(6)) {
                guard Self.sendAll(fd, Array("HTTP/1.1 200 OK\r\nContent-Length: \(count)\r\n\r\n".utf8)) else { return }
                for _ in 0..<count {
                    usleep(300_000)
                    guard Self.sendAll(fd, [UInt8(ascii: "d")]) else { return }
                }
                continue
            } else if target.hasPrefix("/status/"), let code = Int(target.dropFirst(8).prefix { $0.isNumber }) {
                response = Array("HTTP/1.1 \(code) X\r\nContent-Length: \(headText.utf8.count)\r\n\r\n\(headText)".utf8)
            } else if target.hasPrefix("/slow/"), let ms = UInt32(target.dropFirst(6)) {
                usleep(ms * 1000)
                response = Self.response("slow")
            } else if target.hasPrefix("/split/"), let ms = UInt32(target.dropFirst(7)) {
                guard Self.sendAll(fd, Array("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234".utf8)) else { return }
                usleep(ms * 1000)
                response = Array("56789".utf8)
            } else if target.hasPrefix("/short") {
                _ = Self.sendAll(fd, Array("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234".utf8))
                return
            } else if target.hasPrefix("/hints-then-close") {
                // An interim answer, then the connection drops: the request was received.
                _ = Self.sendAll(fd, Array("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n".utf8))
                return
            } else if target.hasPrefix("/vanish") {
                // Promise keep-alive, answer, then drop the connection: the next request on
                // the pooled connection finds it dead before any response byte.
                _ = Self.sendAll(fd, Self.response("gone soon"))
                usleep(100_000)
                return
            } else if target.hasPrefix("/close") {
                response = Array("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close".utf8)
                closeAfter = true
            } else {
                response = Self.response("ok")
            }
            var offset = 0
            while offset < response.count {
                let sent = response[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if sent <= 0 { return }
                offset += sent
            }
            if closeAfter || target.hasSuffix("?then-close") { return }
        }
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent <= 0 { return false }
            offset += sent
        }
        return true
    }

    static func response(_ body: String) -> [UInt8] {
        Array("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)".utf8)
    }
}
