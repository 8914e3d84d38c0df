import HarpKernel

/// `[websocket]`. The idle limit of an upgraded connection is the http plugin's
/// `tunnel_timeout` (HaRP's HP_TIMEOUT_TUNNEL, 1800 s by default).
public struct WebSocketConfiguration: Codable, Sendable {
    /// Routes whose WebSocket frames harp parses and checks instead of splicing them.
    public struct InspectRoute: Codable, Sendable {
        public var host: String?
        public var pathPrefix: String

        enum CodingKeys: String, CodingKey, CaseIterable { case host, pathPrefix = "path_prefix" }

        public init(host: String? = nil, pathPrefix: String) {
            self.host = host?.lowercased()
            self.pathPrefix = pathPrefix
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            self.init(host: try c.decodeIfPresent(String.self, forKey: .host),
                      pathPrefix: try c.decode(String.self, forKey: .pathPrefix))
        }
    }

    /// Once one side has closed its half, the other gets this long to finish.
    public var clientFinTimeout: ConfigDuration
    public var inspect: [InspectRoute]
    /// Inspect mode: a message larger than this is closed with 1009.
    public var maxMessageSize: Int
    /// Inspect mode: harp pings a client after this much silence; 0 disables pings.
    public var pingInterval: ConfigDuration

    public init() {
        clientFinTimeout = .seconds(30)
        inspect = []
        maxMessageSize = 16 << 20
        pingInterval = .seconds(30)
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case clientFinTimeout = "client_fin_timeout", inspect, maxMessageSize = "max_message_size", pingInterval = "ping_interval"
    }

    public init(from decoder: any Decoder) throws {
        var d = WebSocketConfiguration()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        d.clientFinTimeout = try c.decodeIfPresent(ConfigDuration.self, forKey: .clientFinTimeout) ?? d.clientFinTimeout
        d.inspect = try c.decodeIfPresent([InspectRoute].self, forKey: .inspect) ?? []
        d.maxMessageSize = try c.decodeIfPresent(Int.self, forKey: .maxMessageSize) ?? d.maxMessageSize
        d.pingInterval = try c.decodeIfPresent(ConfigDuration.self, forKey: .pingInterval) ?? d.pingInterval
        guard d.maxMessageSize >= 125 else {
            throw ConfigError.invalid(key: "websocket.max_message_size", value: "\(d.maxMessageSize)", reason: "expected at least 125 bytes")
        }
        self = d
    }
}
