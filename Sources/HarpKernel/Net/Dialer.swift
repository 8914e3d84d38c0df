import Glibc

/// Why a dial failed, with what a log line needs: the address, the errno or OpenSSL's reason.
public enum DialError: Error, CustomStringConvertible, Sendable {
    case socket(Socket.Failure)
    case connect(address: SocketAddress, errno: Int32)
    case tls(address: SocketAddress, TLSError)

    /// The connect or the handshake ran out of time (a gateway answers 504 rather than 502).
    public var timedOut: Bool {
        switch self {
        case .socket: false
        case .connect(_, let errno): errno == ETIMEDOUT
        case .tls(_, let error): error.timedOut
        }
    }

    public var description: String {
        switch self {
        case .socket(let failure): "\(failure)"
        case .connect(let address, let errno): "connect to \(address): \(String(cString: strerror(errno)))"
        case .tls(let address, let error): "TLS with \(address): \(error)"
        }
    }
}

/// Opens outgoing connections the same way for every plugin: a socket, a connect bounded by
/// `connectTimeout`, no Nagle delay, and — when `tls` is set — a client handshake that sends
/// `serverName` as SNI and verifies the certificate as the context says. There is no
/// plaintext fallback: a TLS dial that cannot complete its handshake fails.
public struct Dialer: Sendable {
    public var connectTimeout: Duration

    public init(connectTimeout: Duration) {
        self.connectTimeout = connectTimeout
    }

    /// A connected stream on `loop` (call from a task running there).
    public func dial(_ address: SocketAddress, on loop: EventLoop, tls: TLSContext? = nil,
                     serverName: String? = nil) async throws(DialError) -> any ByteStream {
        let socket = try await SocketStream.connect(to: address, on: loop, timeout: connectTimeout)
        guard let tls else { return socket }
        do {
            let stream = try TLSStream(transport: socket, context: tls, isServer: false, serverName: serverName)
            try await stream.handshake(timeout: connectTimeout)
            return stream
        } catch {
            socket.abort()
            throw .tls(address: address, error)
        }
    }
}
