import Glibc

/// A listen address and the configuration key it came from (`http.listen[0]`,
/// `exapps.listen_tls[0].listen`): what a plugin reports in `Plugin.listenAddresses`, so that
/// harp refuses two listeners on one address before anything binds.
public struct ConfiguredAddress: Sendable, Equatable {
    public let key: String
    public let address: SocketAddress

    public init(key: String, address: SocketAddress) {
        self.key = key
        self.address = address
    }

    /// Two listeners of one configuration on one address (or one on a wildcard address and
    /// one on a specific address of the same port and family) are a config error naming both
    /// keys. With SO_REUSEPORT the kernel would accept both and split the connections between
    /// them; port 0 (any free port) never collides.
    public static func checkDistinct(_ addresses: [ConfiguredAddress], origins: ConfigOrigins) throws(ConfigError) {
        for (index, later) in addresses.enumerated() {
            guard let earlier = addresses[..<index].first(where: { $0.address.overlaps(later.address) }) else { continue }
            throw .invalid(key: origins.describe(later.key), value: "\"\(later.address)\"",
                           reason: "already used by \(origins.describe(earlier.key))")
        }
    }
}

extension SocketAddress {
    /// True when binding both would claim the same connections: equal addresses, or one the
    /// wildcard of the other's family and port. Port 0 never overlaps (the kernel picks).
    func overlaps(_ other: SocketAddress) -> Bool {
        if self == other { return port != 0 }
        guard family == other.family, let port, port != 0, port == other.port else { return false }
        return isWildcard || other.isWildcard
    }
}

extension SocketAddress {
    /// 0.0.0.0 or [::]: every address of the host.
    var isWildcard: Bool {
        switch self {
        case .ipv4(let host, _): host == 0
        case .ipv6(let host, _): host.allSatisfy { $0 == 0 }
        case .unix: false
        }
    }
}
