import HarpKernel

/// `[admin]`: where the Prometheus endpoint listens. Keep it on loopback or a private network.
public struct AdminConfiguration: Codable, Sendable {
    public var listen: SocketAddress

    public init(listen: SocketAddress = .ipv4(host: UInt32(0x7f000001).bigEndian, port: 9090)) {
        self.listen = listen
    }

    enum CodingKeys: String, CodingKey, CaseIterable { case listen }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(listen: try c.decodeIfPresent(SocketAddress.self, forKey: .listen) ?? AdminConfiguration().listen)
    }
}
