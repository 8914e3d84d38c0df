/// A `host:port` whose host may be a name, looked up when it is used (each connection
/// attempt), not when the configuration is read: a laptop that starts offline, or a peer
/// whose name does not resolve yet, must not stop harp. IP literals need no lookup.
public struct NamedAddress: Sendable, Equatable, CustomStringConvertible {
    public let host: String
    public let port: UInt16
    /// The address now, when the host is an IP literal (or a Unix path).
    public let literal: SocketAddress?

    /// Parses without looking anything up; the same forms as `SocketAddress(parsing:)`.
    public init(parsing text: String) throws(SocketAddress.ParseError) {
        if text.hasPrefix("unix:") {
            literal = try SocketAddress(parsing: text)
            host = text
            port = 0
            return
        }
        guard let colon = text.lastIndex(of: ":") else { throw SocketAddress.ParseError(input: text, reason: "missing :port") }
        let name = String(text[..<colon])
        guard let port = UInt16(text[text.index(after: colon)...]), port > 0 else {
            throw SocketAddress.ParseError(input: text, reason: "port must be 1-65535")
        }
        guard !name.isEmpty else { throw SocketAddress.ParseError(input: text, reason: "missing host") }
        self.port = port
        host = name
        if name.hasPrefix("[") || name.allSatisfy({ $0.isNumber || $0 == "." }) {
            literal = try SocketAddress(parsing: text)  // an IP literal: parsed, never looked up
        } else {
            guard !name.contains(":") else { throw SocketAddress.ParseError(input: text, reason: "IPv6 addresses need brackets") }
            literal = nil
        }
    }

    /// The address, looking the name up off the loops (`BlockingWork`).
    public func resolved() async throws(SocketAddress.ParseError) -> SocketAddress {
        if let literal { return literal }
        let text = description
        return try await BlockingWork.run { Result { () throws(SocketAddress.ParseError) in try SocketAddress(parsing: text) } }.get()
    }

    public var description: String { literal.map { "\($0)" } ?? "\(host):\(port)" }
}
