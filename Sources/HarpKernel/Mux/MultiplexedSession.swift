/// Many streams over one connection, each a `ByteStream` with its own flow control: what FRP
/// carries its control and work connections over (yamux), and what P2P may use for parallel
/// chunk requests. One shape for every multiplexer (HAProxy's `mux_ops` idea): the session
/// runs its reader, hands out streams the peer opens, opens its own, and ends as a whole.
public protocol MultiplexedSession: AnyObject, Sendable {
    associatedtype Stream: ByteStream

    var loop: EventLoop { get }

    /// Reads and dispatches frames until the connection ends or the peer breaks the protocol;
    /// then every stream is reset. Run it as its own task on `loop`.
    func run() async

    /// The next stream the peer opened; nil once the session has ended.
    func accept() async -> Stream?

    /// Opens a stream to the peer; nil when the session has ended.
    func open() async -> Stream?

    /// Ends the session: the peer is told (go-away), streams are reset, the connection closes.
    func close() async

    /// Why the session ended (nil while it runs).
    var endReason: String? { get }
}
