import Foundation
import Glibc
import HarpKernel
import Synchronization

/// A small HTTP/1.1 server for fakes (Nextcloud's AppAPI, a Docker Engine): thread per
/// connection, keep-alive, `Content-Length` bodies, answers from a handler. Independent of
/// harp's kernel, like the other test origins.
public final class TinyHTTPServer: @unchecked Sendable {
    // @unchecked Sendable: the listener is immutable; flags are atomics; the handler is Sendable.
    public struct Request: Sendable {
        public let method: String
        public let target: String
        /// Names lower-cased, in order.
        public let headers: [(String, String)]
        public let body: [UInt8]

        public func header(_ name: String) -> String? { headers.last { $0.0 == name.lowercased() }?.1 }
        public var path: String { String(target.prefix { $0 != "?" }) }
        public func query(_ name: String) -> String? {
            guard let query = target.split(separator: "?", maxSplits: 1).dropFirst().first else { return nil }
            for pair in query.split(separator: "&") where pair.hasPrefix(name + "=") {
                return String(pair.dropFirst(name.count + 1)).removingPercentEncoding
            }
            return nil
        }
    }

    public struct Response: Sendable {
        public var status: Int
        public var headers: [(String, String)]
        public var body: [UInt8]
        public init(status: Int, headers: [(String, String)] = [], body: [UInt8] = []) {
            self.status = status
            self.headers = headers
            self.body = body
        }
        public static func json(_ status: Int, _ text: String) -> Response {
            Response(status: status, headers: [("Content-Type", "application/json")], body: Array(text.utf8))
        }
    }

    public let address: SocketAddress
    private let listener: TestListener
    private let handler: @Sendable (Request) -> Response?
    /// While set, requests are read and their connections closed without an answer, and new
    /// connections are refused (the listener is closed): a server that went away.
    public let down = Atomic<Bool>(false)
    private let stopped = Atomic<Bool>(false)

    /// `handler` returning nil closes the connection without an answer.
    public init(unixPath: String? = nil, handler: @escaping @Sendable (Request) -> Response?) throws {
        self.handler = handler
        listener = try TestListener(on: unixPath.map { .unix(path: $0) } ?? loopback(0))
        address = listener.address
        listener.start(admit: { [self] in !down.load(ordering: .relaxed) }, serve: { [self] in serve($0) })
    }

    public func stop() {
        stopped.store(true, ordering: .relaxed)
        listener.stop()
    }

    private func serve(_ fd: Int32) {
        defer { close(fd) }
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        func fill() -> Bool {
            let count = recv(fd, &chunk, chunk.count, 0)
            guard count > 0 else { return false }
            buffer.append(contentsOf: chunk[0..<count])
            return true
        }
        while true {
            var headEnd: Int?
            while headEnd == nil {
                headEnd = buffer.firstRange(of: Array("\r\n\r\n".utf8))?.upperBound
                if headEnd == nil && !fill() { return }
            }
            let lines = String(decoding: buffer[0..<headEnd!], as: UTF8.self).components(separatedBy: "\r\n")
            buffer.removeFirst(headEnd!)
            let start = lines[0].split(separator: " ")
            guard start.count >= 2 else { return }
            var headers: [(String, String)] = []
            for line in lines.dropFirst() where !line.isEmpty {
                guard let colon = line.firstIndex(of: ":") else { continue }
                headers.append((line[..<colon].lowercased(), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
            }
            let length = headers.last { $0.0 == "content-length" }.flatMap { Int($0.1) } ?? 0
            while buffer.count < length { if !fill() { return } }
            let body = Array(buffer[0..<length])
            buffer.removeFirst(length)
            if down.load(ordering: .relaxed) || stopped.load(ordering: .relaxed) { return }
            let request = Request(method: String(start[0]), target: String(start[1]), headers: headers, body: body)
            guard let response = handler(request) else { return }
            var head = "HTTP/1.1 \(response.status) X\r\nContent-Length: \(response.body.count)\r\n"
            for (name, value) in response.headers { head += "\(name): \(value)\r\n" }
            let bytes = Array((head + "\r\n").utf8) + response.body
            var offset = 0
            while offset < bytes.count {
                let sent = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if sent <= 0 { return }
                offset += sent
            }
        }
    }
}
