import CoreMetrics
import Glibc
import HarpKernel
import Logging

/// `tcp`: L4 forwarding. Every accepted connection is connected to its upstream and relayed
/// with splice both ways; an unreachable upstream closes the client at once (and is logged).
public final class TCPForwardPlugin: Plugin {
    public static let name = "tcp"
    public static let summary = "L4 TCP/Unix-socket forwarding with a zero-copy splice relay"
    public static var defaultConfiguration: TCPForwardConfiguration { TCPForwardConfiguration() }

    let configuration: TCPForwardConfiguration
    let context: PluginContext
    private let listeners: ListenerSet

    public init(configuration: TCPForwardConfiguration, context: PluginContext) throws {
        for (index, forward) in configuration.forward.enumerated() {
            if let earlier = configuration.forward[..<index].firstIndex(where: { $0.listen == forward.listen }) {
                throw ConfigError.invalid(key: "tcp.forward[\(index)].listen", value: "\"\(forward.listen)\"",
                                          reason: "already used by tcp.forward[\(earlier)]")
            }
        }
        self.configuration = configuration
        self.context = context
        listeners = ListenerSet(loops: context.loops, logger: context.logger)
    }

    public func start() async throws {
        let logger = context.logger
        for (index, forward) in configuration.forward.enumerated() {
            try listeners.listen(on: forward.listen, key: context.origins.describe("tcp.forward[\(index)].listen")) { client in
                await TCPForwardPlugin.serve(client: client, forward: forward, logger: logger)
            }
        }
    }

    public func stopAccepting() async {
        await listeners.stop()
    }

    public var listenAddresses: [ConfiguredAddress] {
        configuration.forward.enumerated().map { ConfiguredAddress(key: "tcp.forward[\($0.offset)].listen", address: $0.element.listen) }
    }

    public var endpoints: [String] {
        zip(configuration.forward, listeners.boundAddresses).map { forward, address in "\(address) -> \(forward.upstream)" }
    }

    /// One client connection, from accept to close, on the loop that accepted it.
    static let connections = Counter(label: "harp_tcp_connections_total")
    static let connectErrors = Counter(label: "harp_tcp_upstream_connect_errors_total")
    static let bytesToUpstream = Counter(label: "harp_tcp_bytes_total", dimensions: [("direction", "to_upstream")])
    static let bytesToClient = Counter(label: "harp_tcp_bytes_total", dimensions: [("direction", "to_client")])

    static func serve(client: SocketStream, forward: TCPForwardConfiguration.Forward, logger: Logger) async {
        connections.increment()
        let loop = client.loop
        let upstream: any ByteStream
        do {
            upstream = try await Dialer(connectTimeout: forward.connectTimeout.duration).dial(forward.upstream, on: loop)
        } catch {
            connectErrors.increment()
            logger.warning("upstream unreachable; closing client", metadata: ["upstream": "\(forward.upstream)", "error": "\(error)"])
            await client.close()
            return
        }
        Socket.setNoDelay(client.fd)
        let result = await loop.relay(client, upstream, idleTimeout: forward.idleTimeout.duration)
        await client.close()
        await upstream.close()
        bytesToUpstream.increment(by: result.forwardBytes)
        bytesToClient.increment(by: result.backwardBytes)
        logger.debug("relay ended", metadata: [
            "upstream": "\(forward.upstream)", "outcome": "\(result)",
            "to_upstream": "\(result.forwardBytes)", "to_client": "\(result.backwardBytes)",
        ])
    }
}
