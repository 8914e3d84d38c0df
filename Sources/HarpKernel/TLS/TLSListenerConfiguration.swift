/// A TLS listener as a config section writes it (`[[http.listen_tls]]`, later the FRP and
/// P2P listeners): an address, a default certificate, more chosen by SNI name, an optional
/// client CA (mutual TLS) and the protocol versions offered.
public struct TLSListenerConfiguration: Codable, Sendable {
    public struct NamedCertificate: Codable, Sendable {
        public var name: String
        public var cert: String
        public var key: String
    }

    public var listen: SocketAddress
    public var cert: String
    public var key: String
    /// Clients must present a certificate signed by this CA (mutual TLS).
    public var clientCA: String?
    public var sni: [NamedCertificate]
    /// The TLS versions offered (`protocols = ["TLSv1.2", "TLSv1.3"]`, the default).
    public var protocols: ClosedRange<TLSVersion>

    enum CodingKeys: String, CodingKey, CaseIterable { case listen, cert, key, clientCA = "client_ca", sni, protocols }

    public init(listen: SocketAddress, cert: String, key: String, clientCA: String? = nil, sni: [NamedCertificate] = [],
                protocols: ClosedRange<TLSVersion> = TLSVersion.all) {
        self.listen = listen
        self.cert = cert
        self.key = key
        self.clientCA = clientCA
        self.sni = sni
        self.protocols = protocols
    }

    /// The server context this listener describes (its SNI certificates included).
    public func makeContext(alpn: [String]) throws(TLSError) -> TLSContext {
        let context = try TLSContext.server(certificate: cert, key: key, clientCA: clientCA, alpn: alpn, versions: protocols)
        for named in sni {
            context.add(serverName: named.name, try TLSContext.server(certificate: named.cert, key: named.key, clientCA: clientCA,
                                                                      alpn: alpn, versions: protocols))
        }
        return context
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        listen = try c.decode(SocketAddress.self, forKey: .listen)
        cert = try c.decode(String.self, forKey: .cert)
        key = try c.decode(String.self, forKey: .key)
        clientCA = try c.decodeIfPresent(String.self, forKey: .clientCA)
        sni = try c.decodeIfPresent([NamedCertificate].self, forKey: .sni) ?? []
        let versions = try c.decodeIfPresent([TLSVersion].self, forKey: .protocols) ?? TLSVersion.allCases
        guard let range = TLSVersion.range(of: versions) else {
            throw ConfigValueProblem("protocols must name at least one of \(TLSVersion.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        protocols = range
    }
}

