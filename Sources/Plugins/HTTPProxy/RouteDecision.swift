import HarpKernel

/// What a route provider decided for one request.
public enum RouteDecision: Sendable {
    /// Proxy to `upstream`, after the provider has rewritten the head as it needs.
    case forward(Upstream)
    /// Answer the client directly.
    case respond(Reply)
    /// Close the connection without any response.
    case drop
    /// Read the whole request body (a `Content-Length` one of at most `limit` bytes), then
    /// answer with what `answer` makes of it: a control-plane POST. Bigger bodies get 413,
    /// chunked ones 411.
    case answerBody(limit: Int, answer: @Sendable ([UInt8]) async -> Reply)

    /// Answer with `body` (a `text/plain` one unless `contentType` says otherwise).
    public static func respond(status: Int, body: String, contentType: String = Reply.plainText,
                               headers: [(String, String)] = []) -> RouteDecision {
        .respond(Reply(status: status, body: Array(body.utf8), contentType: contentType, headers: headers))
    }
}

/// A response a route provider makes itself (a 401 with its body, a control-plane JSON).
/// The proxy adds `Content-Length` and `Connection`.
public struct Reply: Sendable {
    public static let plainText = "text/plain; charset=utf-8"

    public var status: Int
    public var body: [UInt8]
    public var contentType: String
    /// More header fields (`WWW-Authenticate`, `Cache-Control`, …).
    public var headers: [(String, String)]

    public init(status: Int, body: [UInt8], contentType: String = Reply.plainText, headers: [(String, String)] = []) {
        self.status = status
        self.body = body
        self.contentType = contentType
        self.headers = headers
    }
}

/// Who a request came from, as the proxy knows it.
public struct ClientInfo: Sendable {
    /// The peer of the TCP connection.
    public let peer: SocketAddress
    /// Whether the peer is in the trusted-proxy list (its X-Forwarded-* headers count).
    public let isTrustedProxy: Bool
    /// The peer's address as X-Forwarded-For carries it (computed once per connection).
    public let address: String

    public init(peer: SocketAddress, isTrustedProxy: Bool) {
        self.peer = peer
        self.isTrustedProxy = isTrustedProxy
        address = peer.hostText
    }
}

/// Decides who handles a request (ExApps, WebDAV, the static route table). Providers are
/// asked in registration order; the first non-nil decision wins, and nil from all is 404.
///
/// `route` runs on the client connection's loop once per request, after the head has been
/// parsed and validated and before any byte of the body has been read. It may change the
/// head (path, headers) in place; the proxy then removes hop-by-hop headers and sets the
/// X-Forwarded-* headers itself. It may leave what it decided in `exchange.context` for the
/// response observers (which rule matched, which statuses count as failures).
public protocol RouteProvider: Sendable {
    func route(_ request: inout HTTPRequestHead, client: ClientInfo, exchange: Exchange) async -> RouteDecision?
}

/// The `[[http.routes]]` table: host (optional) and path prefix, first match wins.
struct StaticRoutes: RouteProvider {
    let routes: [HTTPProxyConfiguration.Route]

    let matchesHosts: Bool

    init(routes: [HTTPProxyConfiguration.Route]) {
        self.routes = routes
        matchesHosts = routes.contains { $0.host != nil }
    }

    func route(_ request: inout HTTPRequestHead, client: ClientInfo, exchange: Exchange) async -> RouteDecision? {
        let host = matchesHosts ? request.hostWithoutPort : nil
        let path = request.path
        for route in routes {
            if let wanted = route.host, wanted != host { continue }
            // Bytes, not Characters: a path is compared as sent (and faster so).
            guard path.utf8.starts(with: route.pathPrefix.utf8) else { continue }
            if route.stripPrefix && route.pathPrefix != "/" {
                var rest = String(request.target.utf8.dropFirst(route.pathPrefix.utf8.count))!
                if !rest.hasPrefix("/") { rest = "/" + rest }
                request.target = rest
            }
            return .forward(route.upstream)
        }
        return nil
    }
}
