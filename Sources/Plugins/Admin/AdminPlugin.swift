import Glibc
import HarpKernel
import Logging
import Synchronization

/// `admin`: `GET /metrics` (Prometheus text format 0.0.4) and `GET /healthz`, one request per
/// connection. Deliberately tiny: it must keep answering when everything else is busy.
public final class AdminPlugin: Plugin {
    public static let name = "admin"
    public static let summary = "Prometheus /metrics and /healthz endpoint"
    public static var defaultConfiguration: AdminConfiguration { AdminConfiguration() }

    let configuration: AdminConfiguration
    let context: PluginContext
    private let group = Mutex<ListenerGroup?>(nil)

    public init(configuration: AdminConfiguration, context: PluginContext) throws {
        self.configuration = configuration
        self.context = context
    }

    public func start() async throws {
        let logger = context.logger
        // One loop is plenty for scrapes.
        let listeners = try ListenerGroup(address: configuration.listen, loops: Array(context.loops.prefix(1)), logger: logger) { fd, loop in
            loop.spawn { await AdminPlugin.serve(fd, loop: loop) }
        }
        group.withLock { $0 = listeners }
    }

    public func stopAccepting() async {
        await group.withLock { $0 }?.stop()
    }

    public var endpoints: [String] {
        group.withLock { $0 }.map { ["http://\($0.boundAddress)/metrics"] } ?? []
    }

    static func serve(_ fd: Int32, loop: EventLoop) async {
        defer { close(fd) }
        let record = AsyncCompletion()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 16)
        defer { buffer.deallocate() }
        var length = 0
        // Read until the end of the request head (or 8 KiB, or 5 s of silence).
        while length < buffer.count {
            let received = await loop.recv(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[length...]),
                                           timeout: .seconds(5), using: record)
            guard received > 0 else { return }
            length += Int(received)
            if UnsafeRawBufferPointer(rebasing: buffer[0..<length]).firstRange(of: [0x0D, 0x0A, 0x0D, 0x0A]) != nil { break }
        }
        let requestLine = String(decoding: UnsafeRawBufferPointer(rebasing: buffer[0..<length]).prefix { $0 != 0x0D }, as: UTF8.self)
        let parts = requestLine.split(separator: " ")
        let (status, contentType, body): (String, String, [UInt8])
        switch (parts.first, parts.count > 1 ? parts[1].split(separator: "?").first : nil) {
        case ("GET"?, "/metrics"?):
            (status, contentType, body) = ("200 OK", "text/plain; version=0.0.4", MetricsExport.text())
        case ("GET"?, "/healthz"?):
            (status, contentType, body) = ("200 OK", "text/plain", Array("ok\n".utf8))
        default:
            (status, contentType, body) = ("404 Not Found", "text/plain", Array("404 Not Found\n".utf8))
        }
        let response = Array("HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n".utf8) + body
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: response.count, alignment: 16)
        defer { out.deallocate() }
        out.copyBytes(from: response)
        _ = await loop.sendAll(fd, UnsafeRawBufferPointer(out), timeout: .seconds(5), using: record)
    }
}
