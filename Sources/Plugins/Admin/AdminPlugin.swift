import Glibc
import HarpKernel
import Logging

/// `admin`: `GET /metrics` (Prometheus text format 0.0.4) and `GET /healthz`, one request per
/// connection. Deliberately tiny: it must keep answering when everything else is busy.
public final class AdminPlugin: Plugin {
    public static let name = "admin"
    public static let summary = "Prometheus /metrics and /healthz endpoint"
    public static var defaultConfiguration: AdminConfiguration { AdminConfiguration() }

    let configuration: AdminConfiguration
    private let listeners: ListenerSet
    private let origins: ConfigOrigins

    public init(configuration: AdminConfiguration, context: PluginContext) throws {
        self.configuration = configuration
        listeners = ListenerSet(loops: context.loops, logger: context.logger)
        origins = context.origins
    }

    public func start() async throws {
        // One loop is plenty for scrapes. Connections are counted like any plugin's, so a
        // graceful shutdown lets a scrape in progress finish.
        try listeners.listen(on: configuration.listen, key: origins.describe("admin.listen"), loopCount: 1) { await AdminPlugin.serve($0) }
    }

    public var listenAddresses: [ConfiguredAddress] { [ConfiguredAddress(key: "admin.listen", address: configuration.listen)] }

    public func stopAccepting() async {
        await listeners.stop()
    }

    public var endpoints: [String] {
        listeners.boundAddresses.map { "http://\($0)/metrics" }
    }

    static func serve(_ stream: SocketStream) async {
        let reader = FramedReader(stream: stream, capacity: 8192)
        var decoder = HeadEnd()
        // Read until the end of the request head (or 8 KiB, or 5 s of silence).
        guard case .frame(_, let length, _) = await reader.next(&decoder, timeout: .seconds(5)) else {
            await stream.close()
            return
        }
        let head = UnsafeRawBufferPointer(rebasing: reader.buffer.readable[0..<length])
        let requestLine = String(decoding: head.prefix { $0 != 0x0D }, as: UTF8.self)
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
        _ = await stream.write(response, timeout: .seconds(5))
        await stream.close()
    }
}

/// The end of a request head (the blank line); the admin endpoint looks at nothing else.
struct HeadEnd: FrameDecoder {
    mutating func decode(_ bytes: UnsafeRawBufferPointer) -> FrameDecision<Void, Never> {
        guard let end = bytes.firstRange(of: [0x0D, 0x0A, 0x0D, 0x0A]) else { return .needMore }
        return .frame((), headerLength: end.upperBound, payloadLength: 0)
    }
}
