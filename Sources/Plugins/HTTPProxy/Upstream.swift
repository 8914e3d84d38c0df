import HarpKernel

/// Where a route sends requests: `http://host:port` or `unix:/path/to/socket`.
public struct Upstream: Codable, Hashable, Sendable, CustomStringConvertible {
    public let address: SocketAddress
    /// The text the user wrote, used as the pool key and in logs.
    public let text: String

    static let allowedForms = "an upstream like http://127.0.0.1:9000, http://[::1]:9000 or unix:/run/app.sock"

    public init(parsing text: String) throws(ConfigValueProblem) {
        var rest = text
        if rest.hasPrefix("http://") {
            rest = String(rest.dropFirst(7))
            if rest.hasSuffix("/") { rest = String(rest.dropLast()) }
            guard !rest.contains("/") else { throw ConfigValueProblem("an upstream has no path; expected \(Self.allowedForms)") }
            if !rest.contains(":") || rest.hasSuffix("]") { rest += ":80" }
        } else if rest.hasPrefix("https://") {
            throw ConfigValueProblem("https:// upstreams need TLS, which this build does not have yet; expected \(Self.allowedForms)")
        } else if !rest.hasPrefix("unix:") {
            throw ConfigValueProblem("expected \(Self.allowedForms)")
        }
        do {
            address = try SocketAddress(parsing: rest)
        } catch {
            throw ConfigValueProblem("\(error.reason); expected \(Self.allowedForms)")
        }
        self.text = text
    }

    public init(address: SocketAddress) {
        self.address = address
        text = address.family == AF_UNIX_FAMILY ? "\(address)" : "http://\(address)"
    }

    public init(from decoder: any Decoder) throws {
        try self.init(parsing: try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(text)
    }

    public var description: String { text }
}

private let AF_UNIX_FAMILY = SocketAddress.unix(path: "/").family
