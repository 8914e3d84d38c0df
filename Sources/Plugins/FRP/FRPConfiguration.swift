import Foundation
import HarpKernel

/// The `[frp]` section: an frps-compatible tunnel server (HaRP's frps settings by default).
public struct FRPConfiguration: Codable, Sendable {
    /// How clients must secure their connection.
    public enum TLSMode: String, Codable, Sendable, CaseIterable {
        /// Plain TCP only (HaRP's HP_FRP_DISABLE_TLS); a TLS client is refused.
        case off
        /// TLS required, with the server certificate from `cert_dir`.
        case on
        /// TLS required and clients must present a certificate signed by `cert_dir`/ca.crt
        /// (HaRP's set-up: server name `harp.nc`, client `harp.client.nc`).
        case mutual
    }

    /// An inclusive range of ports proxies may bind (`"23000-23999"` or `"8080"`).
    public struct PortRange: Codable, Sendable, CustomStringConvertible {
        public let range: ClosedRange<Int>

        public init(parsing text: String) throws(ConfigValueProblem) {
            let parts = text.split(separator: "-", maxSplits: 1).map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard let low = parts.first ?? nil, let high = parts.count == 2 ? parts[1] : low,
                  (1...65535).contains(low), (1...65535).contains(high), low <= high else {
                throw ConfigValueProblem("expected a port or a range like \"23000-23999\" within 1-65535")
            }
            range = low...high
        }

        public init(from decoder: any Decoder) throws {
            try self.init(parsing: try decoder.singleValueContainer().decode(String.self))
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(description)
        }

        public var description: String { range.count == 1 ? "\(range.lowerBound)" : "\(range.lowerBound)-\(range.upperBound)" }
    }

    public var listen: SocketAddress
    public var tls: TLSMode
    /// ca.crt, server.crt, server.key (and client.crt/client.key for clients).
    public var certDir: String
    /// frp's `auth.token`; empty like HaRP (then the shared key decides).
    public var token: String
    /// Compared (constant time) with a client's `metas.token`; empty turns the check off.
    public var sharedKey: String
    /// Where proxies listen (HaRP: loopback, so only the gateway reaches ExApps).
    public var proxyBind: String
    public var allowPorts: [PortRange]
    public var maxPortsPerClient: Int
    /// Validity of certificates generated at start (mutual TLS, empty `cert_dir`).
    public var certDays: Int
    /// A logged-in client silent this long is gone (frps' `heartbeatTimeout`, 90 s): without
    /// tcpMux its control read times out; with tcpMux yamux pings every third of it and drops
    /// a session silent for two pings.
    public var heartbeatTimeout: ConfigDuration

    public init() {
        listen = .ipv4(host: 0, port: 8782)
        tls = .mutual
        certDir = "/certs/frp"
        token = ""
        sharedKey = ""
        proxyBind = "127.0.0.1"
        allowPorts = [try! PortRange(parsing: "23000-23999"), try! PortRange(parsing: "24000-24099")]
        maxPortsPerClient = 1
        certDays = 5000
        heartbeatTimeout = .seconds(90)
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case listen, tls, certDir = "cert_dir", token, sharedKey = "shared_key", proxyBind = "proxy_bind"
        case allowPorts = "allow_ports", maxPortsPerClient = "max_ports_per_client", certDays = "cert_days"
        case heartbeatTimeout = "heartbeat_timeout"
    }

    public init(from decoder: any Decoder) throws {
        var d = FRPConfiguration()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        d.listen = try c.decodeIfPresent(SocketAddress.self, forKey: .listen) ?? d.listen
        if let text = try c.decodeIfPresent(String.self, forKey: .tls) {
            guard let mode = TLSMode(rawValue: text) else {
                throw ConfigError.invalid(key: "frp.tls", value: "\"\(text)\"", reason: "expected one of off, on, mutual")
            }
            d.tls = mode
        }
        d.certDir = try c.decodeIfPresent(String.self, forKey: .certDir) ?? d.certDir
        d.token = try c.decodeIfPresent(String.self, forKey: .token) ?? d.token
        d.sharedKey = try c.decodeIfPresent(String.self, forKey: .sharedKey) ?? d.sharedKey
        d.proxyBind = try c.decodeIfPresent(String.self, forKey: .proxyBind) ?? d.proxyBind
        d.allowPorts = try c.decodeIfPresent([PortRange].self, forKey: .allowPorts) ?? d.allowPorts
        d.maxPortsPerClient = try c.decodeIfPresent(Int.self, forKey: .maxPortsPerClient) ?? d.maxPortsPerClient
        d.certDays = try c.decodeIfPresent(Int.self, forKey: .certDays) ?? d.certDays
        d.heartbeatTimeout = try c.decodeIfPresent(ConfigDuration.self, forKey: .heartbeatTimeout) ?? d.heartbeatTimeout
        self = d
        try validate()
    }

    func validate() throws(ConfigError) {
        if token.isEmpty && sharedKey.isEmpty {
            throw .invalid(key: "frp.shared_key", value: "\"\"", reason: "set shared_key or token: without either, any client could open tunnels")
        }
        guard (0...65535).contains(maxPortsPerClient) else {
            throw .invalid(key: "frp.max_ports_per_client", value: "\(maxPortsPerClient)", reason: "expected 0 (no limit) to 65535")
        }
        guard isIPAddress(proxyBind) else {
            throw .invalid(key: "frp.proxy_bind", value: "\"\(proxyBind)\"", reason: "expected an IP address to bind proxies to")
        }
        guard heartbeatTimeout.duration >= .seconds(1) else {
            throw .invalid(key: "frp.heartbeat_timeout", value: "\"\(heartbeatTimeout)\"", reason: "expected at least 1s")
        }
        guard (1...36500).contains(certDays) else {
            throw .invalid(key: "frp.cert_days", value: "\(certDays)", reason: "expected 1 to 36500 days")
        }
        if allowPorts.isEmpty {
            throw .invalid(key: "frp.allow_ports", value: "[]", reason: "expected at least one port or range")
        }
    }

    /// Where a proxy for `port` listens. `proxy_bind` is an IP address (checked by
    /// `validate`), so parsing it never asks a name server.
    func proxyAddress(port: Int) -> SocketAddress? {
        guard isIPAddress(proxyBind) else { return nil }
        return try? SocketAddress(parsing: "\(proxyBind.contains(":") ? "[\(proxyBind)]" : proxyBind):\(port)")
    }

    private func isIPAddress(_ text: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }

    func allows(port: Int) -> Bool { allowPorts.contains { $0.range.contains(port) } }
}
