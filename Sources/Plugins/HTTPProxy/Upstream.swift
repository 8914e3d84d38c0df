import HarpKernel

/// Where a route sends requests: `http://host:port`, `https://host:port` or `unix:/path`.
public struct Upstream: Codable, Hashable, Sendable, CustomStringConvertible {
    public let address: SocketAddress
    /// The text the user wrote, used as the pool key and in logs.
    public let text: String
    /// Whether requests go over TLS (`https://`).
    public let isTLS: Bool
    /// The host as written, for SNI and certificate verification of TLS upstreams.
    public let serverName: String?
    /// The Host for a request that came without one (HTTP/1.0 allows that; the HTTP/1.1
    /// request harp sends upstream must have one, RFC 9112 §3.2).
    public let authority: String

    static let allowedForms = "an upstream like http://127.0.0.1:9000, https://app.internal:8443, http://[::1]:9000 or unix:/run/app.sock"

    public init(parsing text: String) throws(ConfigValueProblem) {
        var rest = text
        var tls = false
        var host: String?
        if rest.hasPrefix("http://") || rest.hasPrefix("https://") {
            tls = rest.hasPrefix("https://")
            rest = String(rest.dropFirst(tls ? 8 : 7))
            if rest.hasSuffix("/") { rest = String(rest.dropLast()) }
            guard !rest.contains("/") else { throw ConfigValueProblem("an upstream has no path; expected \(Self.allowedForms)") }
            if !rest.contains(":") || rest.hasSuffix("]") { rest += tls ? ":443" : ":80" }
            let hostPart = String(rest[..<rest.lastIndex(of: ":")!])
            host = hostPart.hasPrefix("[") ? String(hostPart.dropFirst().dropLast()) : hostPart
        } else if !rest.hasPrefix("unix:") {
            throw ConfigValueProblem("expected \(Self.allowedForms)")
        }
        isTLS = tls
        serverName = host
        authority = host == nil ? "localhost" : rest
        do {
            address = try SocketAddress(parsing: rest)
        } catch {
            throw ConfigValueProblem("\(error.reason); expected \(Self.allowedForms)")
        }
        self.text = text
    }

    /// An upstream whose host name was resolved by the caller (an address looked up again
    /// later, off the loop): `host` as written for SNI, verification and the pool key.
    public init(address: SocketAddress, tls: Bool, host: String, port: UInt16) {
        self.address = address
        isTLS = tls
        serverName = host
        let bracketed = host.contains(":") ? "[\(host)]" : host
        authority = "\(bracketed):\(port)"
        text = (tls ? "https://" : "http://") + authority
    }

    public init(address: SocketAddress) {
        self.address = address
        text = address.family == AF_UNIX_FAMILY ? "\(address)" : "http://\(address)"
        isTLS = false
        serverName = nil
        authority = address.family == AF_UNIX_FAMILY ? "localhost" : "\(address)"
    }

    public init(from decoder: any Decoder) throws {
        try self.init(parsing: try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(text)
    }

    public var description: String { text }

    // Identity is the text the user wrote (everything else is derived from it); hashing only
    // that keeps the per-request pool lookups cheap.
    public static func == (a: Upstream, b: Upstream) -> Bool { a.text == b.text }
    public func hash(into hasher: inout Hasher) { hasher.combine(text) }
}

private let AF_UNIX_FAMILY = SocketAddress.unix(path: "/").family
