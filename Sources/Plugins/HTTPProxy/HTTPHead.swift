/// The start line and header fields of a request or response.
public struct HTTPRequestHead: Sendable {
    public var method: String
    /// The request target as sent (origin-form `/path?query` in almost every case).
    public var target: String
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    public var minorVersion: Int
    public var headers: HTTPHeaders

    public init(method: String, target: String, minorVersion: Int = 1, headers: HTTPHeaders = HTTPHeaders()) {
        self.method = method
        self.target = target
        self.minorVersion = minorVersion
        self.headers = headers
    }

    /// The path part of the target, without the query.
    public var path: Substring {
        target.utf8.firstIndex(of: UInt8(ascii: "?")).map { target[..<$0] } ?? target[...]
    }

    /// The Host header without its port, lower-cased.
    public var hostWithoutPort: String? {
        guard let host = headers[.host] else { return nil }
        if host.hasPrefix("[") { return host.split(separator: "]").first.map { String($0.dropFirst()).lowercased() } }
        return String(host.split(separator: ":", maxSplits: 1).first ?? "").lowercased()
    }

    /// Whether the client wants the connection kept open after this exchange (RFC 9112 §9.3).
    public var wantsKeepAlive: Bool {
        if headers.contains(.connection, token: "close") { return false }
        return minorVersion >= 1 || headers.contains(.connection, token: "keep-alive")
    }

    /// Methods whose repetition is harmless (RFC 9110 §9.2.2): only these are retried.
    public var isIdempotent: Bool {
        ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"].contains(method)
    }
}

public struct HTTPResponseHead: Sendable {
    public var status: Int
    public var reason: String
    public var minorVersion: Int
    public var headers: HTTPHeaders

    public init(status: Int, reason: String, minorVersion: Int = 1, headers: HTTPHeaders = HTTPHeaders()) {
        self.status = status
        self.reason = reason
        self.minorVersion = minorVersion
        self.headers = headers
    }
}

/// How the end of a message body is found (RFC 9112 §6.3).
public enum BodyFraming: Equatable, Sendable {
    case none
    case length(Int)
    case chunked
    /// Response only: the body ends when the server closes the connection.
    case untilClose
}
