import HarpKernel

/// Takes over requests that ask to switch protocols (`Upgrade: <protocol>`), for one protocol.
/// Without a handler, an upgrade is still proxied: the 101 is passed on and the connection
/// becomes a spliced tunnel with the http plugin's `tunnel_timeout`.
public protocol UpgradeHandler: Sendable {
    /// The `Upgrade` token served (`websocket`), compared case-insensitively.
    var protocolName: String { get }

    /// Called before the request goes upstream: nil lets it through, a refusal is answered
    /// to the client (and the connection closed).
    func check(_ request: HTTPRequestHead) -> UpgradeRefusal?

    /// Called once the upstream's 101 has reached the client (and bytes either side had
    /// already sent have been flushed across). Runs the connection until it is over; the
    /// proxy closes both descriptors afterwards.
    func tunnel(_ connection: UpgradedConnection) async -> RelayResult

    /// A check or an upstream answer that did not switch protocols.
    func upgradeEnded(refused: Bool)
}

/// A refused upgrade: status, extra headers (426 carries `Sec-WebSocket-Version`) and body.
public struct UpgradeRefusal: Sendable {
    public let status: Int
    public let reason: String
    public let headers: [(String, String)]

    public init(status: Int, reason: String, headers: [(String, String)] = []) {
        self.status = status
        self.reason = reason
        self.headers = headers
    }
}

/// Both ends of a switched connection, on the loop that owns them.
public struct UpgradedConnection: @unchecked Sendable {
    // @unchecked Sendable: descriptors and heads are only used on `loop`.
    public let loop: EventLoop
    public let client: any ByteStream
    public let upstream: any ByteStream
    public let request: HTTPRequestHead
    public let response: HTTPResponseHead
    /// The http plugin's `tunnel_timeout`: the idle limit after the switch.
    public let idleTimeout: Duration
}
