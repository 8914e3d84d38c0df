import Glibc

/// An address range in CIDR notation (`10.0.0.0/8`, `::1/128`, or a bare address), used for
/// trusted-proxy lists.
public struct IPRange: Codable, Hashable, Sendable, CustomStringConvertible {
    public let network: [UInt8]
    public let prefixLength: Int

    public static let allowedForms = "an IP address or CIDR range like 10.0.0.0/8 or ::1/128"

    public init(parsing text: String) throws(ConfigValueProblem) {
        let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
        guard let address = parts.first, let bytes = IPRange.bytes(of: address) else {
            throw ConfigValueProblem("expected \(Self.allowedForms)")
        }
        let maxPrefix = bytes.count * 8
        let prefix = parts.count == 2 ? Int(parts[1]) : maxPrefix
        guard let prefix, (0...maxPrefix).contains(prefix) else {
            throw ConfigValueProblem("prefix length must be 0-\(maxPrefix); expected \(Self.allowedForms)")
        }
        network = IPRange.masked(bytes, prefix)
        prefixLength = prefix
    }

    public init(from decoder: any Decoder) throws {
        try self.init(parsing: try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    /// Whether `address` (4 or 16 bytes; IPv4-mapped IPv6 counts as IPv4) is in the range.
    public func contains(_ address: [UInt8]) -> Bool {
        var candidate = address
        if candidate.count == 16 && network.count == 4 && candidate[0..<10].allSatisfy({ $0 == 0 })
            && candidate[10] == 0xff && candidate[11] == 0xff {
            candidate = Array(candidate[12...])
        }
        guard candidate.count == network.count else { return false }
        return IPRange.masked(candidate, prefixLength) == network
    }

    public static func bytes(of text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: v4) { Array($0) } }
        var v6 = [UInt8](repeating: 0, count: 16)
        if inet_pton(AF_INET6, text, &v6) == 1 { return v6 }
        return nil
    }

    private static func masked(_ bytes: [UInt8], _ prefix: Int) -> [UInt8] {
        bytes.enumerated().map { index, byte in
            let bits = max(0, min(8, prefix - index * 8))
            return bits == 8 ? byte : byte & UInt8(truncatingIfNeeded: 0xff << (8 - bits))
        }
    }

    public var description: String {
        var text = [CChar](repeating: 0, count: 64)
        inet_ntop(network.count == 4 ? AF_INET : AF_INET6, network, &text, 64)
        let address = String(decoding: text.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return prefixLength == network.count * 8 ? address : "\(address)/\(prefixLength)"
    }
}

extension SocketAddress {
    /// The peer address of a connected socket.
    public static func peer(of fd: Int32) -> SocketAddress? {
        decode { getpeername(fd, $0, $1) == 0 }
    }

    /// The host bytes (4 or 16), nil for Unix sockets.
    public var hostBytes: [UInt8]? {
        switch self {
        case .ipv4(let host, _): withUnsafeBytes(of: host) { Array($0) }
        case .ipv6(let host, _): host
        case .unix: nil
        }
    }

    /// The host as text, without port (what X-Forwarded-For carries).
    public var hostText: String {
        switch self {
        case .ipv4, .ipv6:
            let text = description
            let host = text[..<text.lastIndex(of: ":")!]
            return String(host.hasPrefix("[") ? host.dropFirst().dropLast() : host)
        case .unix: return "unix"
        }
    }
}
