import CoreMetrics
import Glibc
import HarpKernel
import Logging
import Synchronization

/// `tcp`: L4 forwarding. Every accepted connection is connected to its upstream and relayed
/// with splice both ways; an unreachable upstream closes the client at once (and is logged).
public final class TCPForwardPlugin: Plugin {
    public static let name = "tcp"
    public static let summary = "L4 TCP/Unix-socket forwarding with a zero-copy splice relay"
    public static var defaultConfiguration: TCPForwardConfiguration { TCPForwardConfiguration() }

    let configuration: TCPForwardConfiguration
    let context: PluginContext
    private let groups = Mutex<[ListenerGroup]>([])

    public init(configuration: TCPForwardConfiguration, context: PluginContext) throws {
        for (index, forward) in configuration.forward.enumerated() {
            if let earlier = configuration.forward[..<index].firstIndex(where: { $0.listen == forward.listen }) {
                throw ConfigError.invalid(key: "tcp.forward[\(index)].listen", value: "\"\(forward.listen)\"",
                                          reason: "already used by tcp.forward[\(earlier)]")
            }
        }
        self.configuration = configuration
        self.context = context
    }

    public func start() async throws {
        for forward in configuration.forward {
            let logger = context.logger
            let group = try ListenerGroup(address: forward.listen, loops: context.loops, logger: logger) { client, loop in
                loop.serveConnection { await TCPForwardPlugin.serve(client: client, forward: forward, loop: loop, logger: logger) }
            }
            groups.withLock { $0.append(group) }
        }
    }

    public func stopAccepting() async {
        for group in groups.withLock({ $0 }) { await group.stop() }
    }

    public var endpoints: [String] {
        let bound = groups.withLock { $0.map(\.boundAddress) }
        return zip(configuration.forward, bound).map { forward, address in "\(address) -> \(forward.upstream)" }
    }

    /// One client connection, from accept to close, on the loop that accepted it.
    static let connections = Counter(label: "harp_tcp_connections_total")
    static let connectErrors = Counter(label: "harp_tcp_upstream_connect_errors_total")
    static let bytesToUpstream = Counter(label: "harp_tcp_bytes_total", dimensions: [("direction", "to_upstream")])
    static let bytesToClient = Counter(label: "harp_tcp_bytes_total", dimensions: [("direction", "to_client")])

    static func serve(client: Int32, forward: TCPForwardConfiguration.Forward, loop: EventLoop, logger: Logger) async {
        connections.increment()
        defer { close(client) }
        let record = AsyncCompletion()
        let upstream: Int32
        do {
            upstream = try Socket.stream(family: forward.upstream.family)
        } catch {
            logger.error("cannot open upstream socket", metadata: ["upstream": "\(forward.upstream)", "error": "\(error)"])
            return
        }
        defer { close(upstream) }
        let connected = await loop.connect(upstream, to: forward.upstream, timeout: forward.connectTimeout.duration, using: record)
        guard connected == 0 else {
            connectErrors.increment()
            logger.warning("upstream unreachable; closing client",
                           metadata: ["upstream": "\(forward.upstream)", "error": "\(String(cString: strerror(-connected)))"])
            return
        }
        Socket.setNoDelay(upstream)
        Socket.setNoDelay(client)
        let result = await loop.relay(client, upstream, idleTimeout: forward.idleTimeout.duration)
        bytesToUpstream.increment(by: result.forwardBytes)
        bytesToClient.increment(by: result.backwardBytes)
        logger.debug("relay ended", metadata: [
            "upstream": "\(forward.upstream)", "outcome": "\(result)",
            "to_upstream": "\(result.forwardBytes)", "to_client": "\(result.backwardBytes)",
        ])
    }
}
