import Glibc
import HarpKernel

/// A reply from `HTTPClient`: the head and the whole body (bounded by `maxBodySize`).
public struct HTTPClientResponse: Sendable {
    public let status: Int
    public let headers: HTTPHeaders
    public let body: [UInt8]
}

/// Why an `HTTPClient` call failed.
public enum HTTPClientError: Error, CustomStringConvertible, Sendable {
    case connect(DialError)
    /// Nothing (or not all) came back in time.
    case timedOut
    /// The connection failed or closed before the whole response arrived.
    case closed
    /// The connection closed before any byte of a response (a kept-alive connection the
    /// server had closed: the request can go again on a fresh one).
    case closedBeforeResponse
    /// The response broke HTTP/1.1 or its body exceeded the limit.
    case invalidResponse(String)

    public var description: String {
        switch self {
        case .connect(let error): "\(error)"
        case .timedOut: "no complete response in time"
        case .closed: "the connection closed before the response was complete"
        case .closedBeforeResponse: "the connection closed before any response"
        case .invalidResponse(let reason): "invalid response: \(reason)"
        }
    }
}

/// A small HTTP/1.1 client for plugins' own calls (the ExApps plugin's Nextcloud lookups),
/// built from the proxy's pieces: the kernel `Dialer`, per-loop `UpstreamPool`s of kept-alive
/// connections, `HeadWriter`, the strict response parser and the chunked decoder. Bodies are
/// collected whole, so it suits small JSON exchanges, not transfers.
///
/// Calls run on the caller's loop (a task on `loop`) and never block it. TLS contexts are
/// fixed at init: an https upstream is never reached in plain text.
public final class HTTPClient: @unchecked Sendable {
    // @unchecked Sendable: `pools[i]` is used only on loop i's thread; the rest is immutable.
    let dialer: Dialer
    let tls: TLSContext
    /// How long a whole response may take (a call may ask for less).
    public let responseTimeout: Duration
    let maxBodySize: Int
    let parser: HTTPHeadParser
    private let pools: [UpstreamPool]

    /// `tls` is used for every https upstream (default: the system trust store, verified).
    public init(loops: [EventLoop], connectTimeout: Duration = .seconds(10), responseTimeout: Duration = .seconds(30),
                maxBodySize: Int = 1 << 20, keepalive: Int = 8, idleTimeout: Duration = .seconds(30),
                tls: TLSContext? = nil) throws(TLSError) {
        dialer = Dialer(connectTimeout: connectTimeout)
        if let tls { self.tls = tls } else { self.tls = try TLSContext.client() }
        self.responseTimeout = responseTimeout
        self.maxBodySize = maxBodySize
        parser = HTTPHeadParser(maxHeadBytes: 64 * 1024, maxTargetBytes: 64 * 1024)
        pools = loops.map { UpstreamPool(loop: $0, maxPerUpstream: keepalive, idleTimeout: idleTimeout) }
    }

    /// Sends one request to `upstream` and returns the response. `target` is the path and
    /// query; `Host` defaults to the upstream's authority and `Content-Length` is set from
    /// `body`. A kept-alive connection that turns out closed before any response byte is
    /// replaced by a fresh one and the request sent again (harp holds the whole body). The
    /// whole call — a retry included — ends within `timeout` (default `responseTimeout`).
    public func request(_ method: String, _ upstream: Upstream, target: String, headers: [(String, String)] = [],
                        body: [UInt8] = [], timeout: Duration? = nil, on loop: EventLoop) async throws(HTTPClientError) -> HTTPClientResponse {
        loop.assertInLoop()
        var head = HTTPRequestHead(method: method, target: target, headers: HTTPHeaders(headers.map { (name: $0.0, value: $0.1) }))
        if head.headers[.host] == nil { head.headers.add(.host, upstream.authority) }
        if !body.isEmpty || ["POST", "PUT", "PATCH"].contains(method) { head.headers.set(.contentLength, "\(body.count)") }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(512 + body.count)
        HeadWriter.request(head, into: &bytes)
        bytes.append(contentsOf: body)
        let pool = pools[loop.index]
        let deadline = loop.now &+ (timeout ?? responseTimeout).nanoseconds
        var fresh = false
        while true {
            let stream: any ByteStream
            var reused = false
            if !fresh, let idle = pool.take(upstream) {
                stream = idle
                reused = true
            } else {
                do {
                    stream = try await dialer.dial(upstream.address, on: loop, tls: upstream.isTLS ? tls : nil, serverName: upstream.serverName)
                } catch {
                    throw .connect(error)
                }
                pool.opened(upstream)
            }
            switch await exchange(bytes, method: method, until: deadline, on: stream) {
            case .success(let (response, keepAlive)):
                if keepAlive { pool.give(stream, to: upstream) } else { pool.discard(stream, of: upstream) }
                return response
            case .failure(let error):
                pool.discard(stream, of: upstream)
                if reused, case .closedBeforeResponse = error, !fresh {
                    fresh = true
                    continue
                }
                throw error
            }
        }
    }

    /// One request and its whole response, all by `deadline` (the loop clock): a server that
    /// sends a byte now and then must not hold the call (and every caller coalesced onto it)
    /// forever — a per-read limit let a Nextcloud dribbling one byte every 5 s do that (hostile
    /// probe).
    private func exchange(_ request: [UInt8], method: String, until deadline: UInt64,
                          on stream: any ByteStream) async -> Result<(HTTPClientResponse, Bool), HTTPClientError> {
        /// What is left of the limit (at least 1 ms: a zero timeout would mean none).
        func remaining() -> Duration {
            let now = stream.loop.now
            return .nanoseconds(Int64(deadline > now ? max(deadline - now, 1_000_000) : 1_000_000))
        }
        guard await stream.write(request, timeout: remaining()) == 0 else { return .failure(.closedBeforeResponse) }
        let reader = FramedReader(stream: stream, capacity: 64 * 1024 + maxBodySize)
        var decoder = ResponseHeadDecoder(parser: parser)
        var head: HTTPResponseHead
        var sawHead = false
        repeat {
            switch await reader.next(&decoder, timeout: remaining(), until: deadline, expectingWait: true) {
            case .frame(let parsed, let length, _):
                reader.buffer.consume(length)
                head = parsed
            case .invalid(let error): return .failure(.invalidResponse("\(error)"))
            case .full: return .failure(.invalidResponse("response head too large"))
            case .ended(let result):
                if result == -Int(ETIMEDOUT) { return .failure(.timedOut) }
                return .failure(reader.buffer.isEmpty && !sawHead ? .closedBeforeResponse : .closed)
            }
            sawHead = true
            decoder = ResponseHeadDecoder(parser: parser)
        } while head.status < 200  // 1xx interim responses are skipped
        let framing: BodyFraming
        do {
            framing = try MessageFraming.response(head, requestMethod: method)
        } catch {
            return .failure(.invalidResponse("\(error)"))
        }
        var body: [UInt8] = []
        switch framing {
        case .none:
            break
        case .length(let count):
            guard count <= maxBodySize else { return .failure(.invalidResponse("body over \(maxBodySize) bytes")) }
            while reader.buffer.count < count {
                let got = await reader.fill(timeout: remaining())
                if got <= 0 { return .failure(got == -Int(ETIMEDOUT) ? .timedOut : .closed) }
            }
            body = Array(reader.buffer.readable[0..<count])
            reader.buffer.consume(count)
        case .untilClose:
            while true {
                let got = await reader.fill(timeout: remaining())
                if got == 0 { break }
                if got == -Int(ENOBUFS) { return .failure(.invalidResponse("body over \(maxBodySize) bytes")) }
                if got < 0 { return .failure(got == -Int(ETIMEDOUT) ? .timedOut : .closed) }
            }
            body = Array(reader.buffer.readable)
            reader.buffer.consume(reader.buffer.count)
        case .chunked:
            var chunks = ChunkedDecoder()
            while !chunks.isDone {
                let readable = reader.buffer.readable
                do {
                    let consumed = try chunks.feed(readable) { event in
                        if case .data(let range) = event { body.append(contentsOf: readable[range]) }
                    }
                    reader.buffer.consume(consumed)
                } catch {
                    return .failure(.invalidResponse("\(error)"))
                }
                if body.count > maxBodySize { return .failure(.invalidResponse("body over \(maxBodySize) bytes")) }
                if chunks.isDone { break }
                let got = await reader.fill(timeout: remaining())
                if got <= 0 { return .failure(got == -Int(ETIMEDOUT) ? .timedOut : got == -Int(ENOBUFS) ? .invalidResponse("chunk line too long") : .closed) }
            }
        }
        let keepAlive = framing != .untilClose && head.minorVersion >= 1 && !head.headers.contains(.connection, token: "close")
            && reader.buffer.isEmpty
        return .success((HTTPClientResponse(status: head.status, headers: head.headers, body: body), keepAlive))
    }
}
