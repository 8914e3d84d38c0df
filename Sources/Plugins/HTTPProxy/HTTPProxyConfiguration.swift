import HarpKernel

/// The `[http]` section.
public struct HTTPProxyConfiguration: Codable, Sendable {
    public struct Route: Codable, Sendable {
        /// Matches the Host header without port, case-insensitively; nil matches any host.
        public var host: String?
        public var pathPrefix: String
        /// Remove `path_prefix` from the path before forwarding (keeping a leading `/`).
        public var stripPrefix: Bool
        public var upstream: Upstream
        /// https upstreams: a PEM CA file to verify against instead of the system store.
        public var ca: String?
        /// https upstreams: verification is on unless set to false (and then logged).
        public var verify: Bool

        enum CodingKeys: String, CodingKey, CaseIterable {
            case host, pathPrefix = "path_prefix", stripPrefix = "strip_prefix", upstream, ca, verify
        }

        public init(host: String? = nil, pathPrefix: String = "/", stripPrefix: Bool = false, upstream: Upstream,
                    ca: String? = nil, verify: Bool = true) {
            self.host = host?.lowercased()
            self.pathPrefix = pathPrefix
            self.stripPrefix = stripPrefix
            self.upstream = upstream
            self.ca = ca
            self.verify = verify
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let prefix = try c.decode(String.self, forKey: .pathPrefix)
            guard prefix.hasPrefix("/") else {
                throw ConfigValueProblem("path_prefix \"\(prefix)\" must start with /")
            }
            self.init(host: try c.decodeIfPresent(String.self, forKey: .host), pathPrefix: prefix,
                      stripPrefix: try c.decodeIfPresent(Bool.self, forKey: .stripPrefix) ?? false,
                      upstream: try c.decode(Upstream.self, forKey: .upstream),
                      ca: try c.decodeIfPresent(String.self, forKey: .ca),
                      verify: try c.decodeIfPresent(Bool.self, forKey: .verify) ?? true)
        }
    }

    public var listen: [SocketAddress]
    public var listenTLS: [TLSListenerConfiguration]
    public var routes: [Route]
    /// Request heads above this get 431.
    public var maxHeaderSize: Int
    /// Request targets above this get 414.
    public var maxTargetSize: Int
    /// Request bodies above this get 413; 0 means no limit.
    public var maxBodySize: Int
    /// HaRP's timeouts: connecting to an upstream; waiting for client bytes (also the
    /// keep-alive idle time); waiting for upstream bytes; idle time of an upgraded tunnel.
    public var connectTimeout: ConfigDuration
    public var clientTimeout: ConfigDuration
    /// A whole request head must arrive within this of its first byte (nginx's
    /// `client_header_timeout`): `client_timeout` alone restarts on every byte, so a client
    /// trickling a head could hold a connection for hours. Default: `client_timeout`.
    public var clientHeaderTimeout: ConfigDuration
    public var serverTimeout: ConfigDuration
    public var tunnelTimeout: ConfigDuration
    /// Peers whose X-Forwarded-* headers are kept (extended) instead of replaced.
    public var trustedProxies: [IPRange]
    /// The most idle keep-alive connections kept per upstream and loop (the pool keeps as many
    /// as were in use at once lately, up to this; 0: none), and for how long.
    public var upstreamKeepalive: Int
    public var upstreamIdleTimeout: ConfigDuration
    /// One line per request on the `harp.http.access` logger.
    public var accessLog: Bool
    /// Whether access log lines keep the query string (off: it often carries tokens).
    public var accessLogQuery: Bool
    /// Client connections open at once (split evenly across loops). At the limit the
    /// longest-idle kept-alive connection is closed for a new one; with none idle, the new
    /// connection is refused.
    public var maxConnections: Int

    public init() {
        listen = [.ipv4(host: UInt32(0x7f000001).bigEndian, port: 8080)]
        listenTLS = []
        routes = []
        maxHeaderSize = 32 * 1024
        maxTargetSize = 8 * 1024
        maxBodySize = 0
        connectTimeout = .seconds(30)
        clientTimeout = .seconds(30)
        clientHeaderTimeout = .seconds(30)
        serverTimeout = .seconds(1800)
        tunnelTimeout = .seconds(1800)
        trustedProxies = []
        upstreamKeepalive = 1024
        upstreamIdleTimeout = .seconds(60)
        accessLog = true
        accessLogQuery = false
        maxConnections = 10_000
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case listen, listenTLS = "listen_tls", routes, maxHeaderSize = "max_header_size", maxTargetSize = "max_target_size"
        case maxBodySize = "max_body_size", connectTimeout = "connect_timeout", clientTimeout = "client_timeout", clientHeaderTimeout = "client_header_timeout"
        case serverTimeout = "server_timeout", tunnelTimeout = "tunnel_timeout", trustedProxies = "trusted_proxies"
        case upstreamKeepalive = "upstream_keepalive", upstreamIdleTimeout = "upstream_idle_timeout"
        case accessLog = "access_log", accessLogQuery = "access_log_query", maxConnections = "max_connections"
    }

    public init(from decoder: any Decoder) throws {
        var d = HTTPProxyConfiguration()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        d.listenTLS = try c.decodeIfPresent([TLSListenerConfiguration].self, forKey: .listenTLS) ?? []
        // With only HTTPS listeners configured, no plain listener is implied.
        d.listen = try c.decodeIfPresent([SocketAddress].self, forKey: .listen) ?? (d.listenTLS.isEmpty ? d.listen : [])
        d.routes = try c.decodeIfPresent([Route].self, forKey: .routes) ?? []
        d.maxHeaderSize = try c.decodeIfPresent(Int.self, forKey: .maxHeaderSize) ?? d.maxHeaderSize
        d.maxTargetSize = try c.decodeIfPresent(Int.self, forKey: .maxTargetSize) ?? d.maxTargetSize
        d.maxBodySize = try c.decodeIfPresent(Int.self, forKey: .maxBodySize) ?? d.maxBodySize
        d.connectTimeout = try c.decodeIfPresent(ConfigDuration.self, forKey: .connectTimeout) ?? d.connectTimeout
        d.clientTimeout = try c.decodeIfPresent(ConfigDuration.self, forKey: .clientTimeout) ?? d.clientTimeout
        d.clientHeaderTimeout = try c.decodeIfPresent(ConfigDuration.self, forKey: .clientHeaderTimeout) ?? d.clientTimeout
        d.serverTimeout = try c.decodeIfPresent(ConfigDuration.self, forKey: .serverTimeout) ?? d.serverTimeout
        d.tunnelTimeout = try c.decodeIfPresent(ConfigDuration.self, forKey: .tunnelTimeout) ?? d.serverTimeout
        d.trustedProxies = try c.decodeIfPresent([IPRange].self, forKey: .trustedProxies) ?? []
        d.upstreamKeepalive = try c.decodeIfPresent(Int.self, forKey: .upstreamKeepalive) ?? d.upstreamKeepalive
        d.upstreamIdleTimeout = try c.decodeIfPresent(ConfigDuration.self, forKey: .upstreamIdleTimeout) ?? d.upstreamIdleTimeout
        d.accessLog = try c.decodeIfPresent(Bool.self, forKey: .accessLog) ?? d.accessLog
        d.accessLogQuery = try c.decodeIfPresent(Bool.self, forKey: .accessLogQuery) ?? d.accessLogQuery
        d.maxConnections = try c.decodeIfPresent(Int.self, forKey: .maxConnections) ?? d.maxConnections
        self = d
        try validate()
    }

    func validate() throws(ConfigError) {
        func range(_ key: String, _ value: Int, _ allowed: ClosedRange<Int>) throws(ConfigError) {
            guard allowed.contains(value) else {
                throw .invalid(key: "http.\(key)", value: "\(value)", reason: "expected \(allowed.lowerBound) to \(allowed.upperBound)")
            }
        }
        try range("max_header_size", maxHeaderSize, 1024...1_048_576)
        try range("max_target_size", maxTargetSize, 256...1_048_576)
        try range("max_body_size", maxBodySize, 0...Int.max)
        try range("upstream_keepalive", upstreamKeepalive, 0...100_000)
        try range("max_connections", maxConnections, 1...1_000_000)
    }
}
