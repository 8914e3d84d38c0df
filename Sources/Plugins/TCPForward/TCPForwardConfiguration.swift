import HarpKernel

/// `[[tcp.forward]]` entries: each listen address is relayed to one upstream.
public struct TCPForwardConfiguration: Codable, Sendable {
    public struct Forward: Codable, Sendable {
        public var listen: SocketAddress
        public var upstream: SocketAddress
        /// How long connecting to the upstream may take before the client is closed.
        public var connectTimeout: ConfigDuration
        /// A relay with no bytes moving either way for this long is closed.
        public var idleTimeout: ConfigDuration

        public init(listen: SocketAddress, upstream: SocketAddress,
                    connectTimeout: ConfigDuration = .seconds(5), idleTimeout: ConfigDuration = .seconds(1800)) {
            self.listen = listen
            self.upstream = upstream
            self.connectTimeout = connectTimeout
            self.idleTimeout = idleTimeout
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case listen, upstream, connectTimeout = "connect_timeout", idleTimeout = "idle_timeout"
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            self.init(listen: try c.decode(SocketAddress.self, forKey: .listen),
                      upstream: try c.decode(SocketAddress.self, forKey: .upstream),
                      connectTimeout: try c.decodeIfPresent(ConfigDuration.self, forKey: .connectTimeout) ?? .seconds(5),
                      idleTimeout: try c.decodeIfPresent(ConfigDuration.self, forKey: .idleTimeout) ?? .seconds(1800))
        }
    }

    public var forward: [Forward]

    public init(forward: [Forward] = []) {
        self.forward = forward
    }

    enum CodingKeys: String, CodingKey, CaseIterable { case forward }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        forward = try c.decodeIfPresent([Forward].self, forKey: .forward) ?? []
    }
}
