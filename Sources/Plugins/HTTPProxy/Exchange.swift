import HarpKernel

/// What happened to one request, for the access log, metrics and response observers.
public final class Exchange: @unchecked Sendable {
    // @unchecked Sendable: filled in on the connection's loop, handed to observers after the
    // exchange is over and no longer mutated.
    public let method: String
    /// The loop the request is served on (a provider's own calls, e.g. `HTTPClient`, run there).
    public let loop: EventLoop
    /// The target as the client sent it (a route may rewrite what goes upstream).
    public let target: String
    public var status = 0
    public var upstream: Upstream?
    public var requestBytes = 0
    public var responseBytes = 0
    /// The request body has been read to its end (so the client connection can go on).
    public var requestBodyDone = false
    /// Body bytes have started to leave the client's buffer (the request can't be replayed).
    public var requestBodyStarted = false
    /// An upstream response head (a 1xx included) has arrived: the request was received.
    public var sawResponseHead = false
    public let started: UInt64
    public var finished: UInt64 = 0
    /// What a route provider found out, for the access log and metrics: the client as the
    /// front proxy named it (nil: the peer), the service (an ExApp's id) and user, and why a
    /// request was refused or dropped ("ban", "traversal", "internal_route", "control_key", …).
    public var client: String?
    public var app: String?
    public var user: String?
    public var reason: String?
    /// The rule that decided (an ExApp route's pattern), for debug logs.
    public var route: String?
    /// The per-request slot a route provider fills and response observers read (Pingora's
    /// per-request context): whatever the provider needs to judge the outcome.
    public var context: (any Sendable)?

    init(request: HTTPRequestHead, loop: EventLoop, started: UInt64) {
        method = request.method
        self.loop = loop
        target = request.target
        self.started = started
    }

    public var durationSeconds: Double { Double(finished &- started) / 1e9 }
}

/// Sees every finished exchange (access log, brute-force counting). Called on the
/// connection's loop: keep it short and never block.
public protocol ResponseObserver: Sendable {
    func observe(_ exchange: Exchange, client: ClientInfo)
}
