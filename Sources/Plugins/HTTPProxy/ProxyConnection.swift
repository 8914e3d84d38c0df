import Glibc
import HarpKernel
import Logging

/// One client connection, from accept to close, on the loop that accepted it: read a request
/// head, ask the route providers, forward to an upstream from the pool, relay the response,
/// and repeat while both sides keep the connection alive. Requests are handled one at a time,
/// so pipelined requests are answered in order.
final class ProxyConnection {
    let loop: EventLoop
    /// The client's plaintext: the socket itself, or a TLS stream over it.
    let client: any ByteStream
    let info: ClientInfo
    let shared: ProxyShared
    /// The listener group this connection came in on: its route providers decide.
    let site: ProxySite
    /// The client's bytes: request heads are decoded here; body bytes that came with a head
    /// are forwarded from here before the rest is spliced.
    let requests: FramedReader
    var inbound: ReadBuffer { requests.buffer }
    /// Whether a request has been answered on this connection (the next one is then a
    /// keep-alive wait; the first usually came with the connection).
    private var answeredOne = false
    /// Upstream bytes of the current exchange; empty between exchanges (a connection whose
    /// response left bytes behind is not reused), so one buffer serves the whole connection.
    private lazy var responseBuffer = ReadBuffer(capacity: config.maxHeaderSize + 16 * 1024, pool: loop.readBuffers)
    /// Links in the loop's list of idle kept-alive connections (`ConnectionRoster`).
    var idleOlder: ProxyConnection?
    var idleNewer: ProxyConnection?
    /// Set when the roster closed this connection to make room for a new one.
    private var wasShed = false

    init(client: any ByteStream, shared: ProxyShared, site: ProxySite) {
        loop = client.loop
        self.client = client
        self.shared = shared
        self.site = site
        let peer = client.peer ?? .unix(path: "")
        let trusted = site.trustedProxies ?? shared.configuration.trustedProxies
        info = ClientInfo(peer: peer, isTrustedProxy: peer.hostBytes.map { bytes in trusted.contains { $0.contains(bytes) } } ?? false)
        // No buffer until the first bytes arrive: a connection that sends nothing costs little.
        requests = FramedReader(stream: client, capacity: shared.configuration.maxHeaderSize + 16 * 1024, allocatesWhenReadable: true)
    }

    var config: HTTPProxyConfiguration { shared.configuration }

    func run() async {
        loop.assertInLoop()
        shared.metrics.connectionOpened()
        let roster = shared.roster(for: loop)
        while let (head, length) = await readRequestHead(roster) {
            inbound.consume(length)
            let exchange = Exchange(request: head, loop: loop, started: EventLoop.preciseNanos())
            let keepAlive = await handle(head, exchange)
            answeredOne = true
            exchange.finished = EventLoop.preciseNanos()
            shared.record(exchange, client: info, site: site)
            if !keepAlive { break }
        }
        roster.working(self)
        // A TLS connection ends with close_notify (RFC 8446 §6.1), sent by close().
        await client.close()
        shared.metrics.connectionClosed()
    }

    /// Closes this idle kept-alive connection at once (its wait for a request returns).
    func shed() {
        wasShed = true
        shared.metrics.connectionShed()
        client.abort()
    }

    // MARK: Reading the request head

    /// The next request head, or nil when the connection should close (EOF, timeout, a bad
    /// head — which has been answered).
    private func readRequestHead(_ roster: ConnectionRoster) async -> (HTTPRequestHead, Int)? {
        var decoder = RequestHeadDecoder(parser: shared.parser)
        // Nothing buffered after an answer: the client has yet to send (the keep-alive pause),
        // and may be shed at the connection limit meanwhile.
        let keepAliveWait = answeredOne && inbound.isEmpty
        if keepAliveWait {
            inbound.shrinkIfIdle()
            roster.idle(self)
        }
        let result = await requests.next(&decoder, timeout: config.clientTimeout.duration, frameTimeout: config.clientHeaderTimeout.duration,
                                         expectingWait: answeredOne)
        if keepAliveWait { roster.working(self) }
        if wasShed { return nil }
        switch result {
        case .frame(let head, let length, _):
            return (head, length)
        case .invalid(let error):
            shared.logger.info("refused request", metadata: ["client": "\(info.peer)", "error": "\(error)"])
            shared.metrics.refused(status: error.status)
            await respond(status: error.status, keepAlive: false)
            return nil
        case .full:
            await respond(status: 431, keepAlive: false)
            return nil
        case .ended:
            return nil  // EOF, idle timeout, a head that took too long, or reset: just close
        }
    }

    // MARK: One exchange

    /// Handles one request; returns whether the client connection stays open.
    private func handle(_ original: HTTPRequestHead, _ exchange: Exchange) async -> Bool {
        var request = original
        let framing: BodyFraming
        do {
            framing = try MessageFraming.request(request)
        } catch {
            shared.logger.info("refused request", metadata: ["client": "\(info.peer)", "error": "\(error)"])
            exchange.status = error.status
            await respond(status: error.status, keepAlive: false)
            return false
        }
        if case .length(let count) = framing, config.maxBodySize > 0, count > config.maxBodySize {
            exchange.status = 413
            await respond(status: 413, keepAlive: false)
            return false
        }
        let hasBody = framing != .none
        let upgrade = shared.upgradeHandler(for: request)
        if let upgrade, let refusal = upgrade.check(request) {
            upgrade.upgradeEnded(refused: true)
            exchange.status = refusal.status
            shared.logger.info("refused upgrade", metadata: ["client": "\(info.peer)", "reason": "\(refusal.reason)"])
            _ = await sendToClient(CannedResponse.bytes(status: refusal.status, body: "\(refusal.status) \(refusal.reason)",
                                                        keepAlive: false, extraHeaders: refusal.headers))
            return false
        }
        guard let decision = await site.route(&request, client: info, exchange: exchange) else {
            exchange.status = 404
            await respond(status: 404, keepAlive: !hasBody && request.wantsKeepAlive)
            return !hasBody && request.wantsKeepAlive
        }
        switch decision {
        case .drop:
            exchange.status = 0
            return false
        case .respond(let reply):
            exchange.status = reply.status
            let keepAlive = !hasBody && request.wantsKeepAlive
            _ = await sendToClient(CannedResponse.bytes(reply, keepAlive: keepAlive))
            return keepAlive
        case .answerBody(let limit, let answer):
            let expectsContinue = request.headers.contains(.expect, token: "100-continue")
            guard let body = await readWholeBody(framing, limit: limit, expectsContinue: expectsContinue, exchange) else { return false }
            let reply = await answer(body)
            exchange.status = reply.status
            _ = await sendToClient(CannedResponse.bytes(reply, keepAlive: request.wantsKeepAlive))
            return request.wantsKeepAlive
        case .forward(let upstream):
            exchange.upstream = upstream
            return await forward(request, framing: framing, to: upstream, exchange)
        }
    }

    /// A small body read whole for a provider's own answer; nil when the client got an error
    /// (411, 413) or went away.
    private func readWholeBody(_ framing: BodyFraming, limit: Int, expectsContinue: Bool, _ exchange: Exchange) async -> [UInt8]? {
        let count: Int
        switch framing {
        case .none: return []
        case .length(let length): count = length
        case .chunked, .untilClose:
            exchange.status = 411
            await respond(status: 411, keepAlive: false)
            return nil
        }
        guard count <= limit else {
            exchange.status = 413
            await respond(status: 413, keepAlive: false)
            return nil
        }
        if inbound.isEmpty, count > 0, expectsContinue {
            guard await sendToClient(Self.continueBytes) else { return nil }
        }
        var body: [UInt8] = []
        body.reserveCapacity(count)
        while body.count < count {
            if inbound.isEmpty {
                guard await requests.fill(timeout: config.clientTimeout.duration) > 0 else { return nil }
            }
            let take = min(inbound.count, count - body.count)
            body.append(contentsOf: inbound.readable[0..<take])
            inbound.consume(take)
        }
        exchange.requestBytes += count
        exchange.requestBodyDone = true
        return body
    }

    private func forward(_ request: HTTPRequestHead, framing: BodyFraming, to upstream: Upstream,
                         _ exchange: Exchange) async -> Bool {
        // Answer 100-continue ourselves (as nginx does): the body then flows straight through.
        let expectsContinue = request.headers.contains(.expect, token: "100-continue")
        var answerContinue = expectsContinue && framing != .none && inbound.isEmpty
        // A small body that did not all come with its head is read whole first (nginx buffers
        // request bodies too): held, a PUT's can go again if a reused upstream connection turns
        // out closed (streamed, it could not: part of it would have left).
        if case .length(let count) = framing, count <= Self.heldBodyLimit, count <= inbound.capacity, inbound.count < count {
            if answerContinue {
                guard await sendToClient(Self.continueBytes) else { return false }
                answerContinue = false
            }
            while inbound.count < count {
                guard await requests.fill(timeout: config.clientTimeout.duration) > 0 else { return false }
            }
        }
        let head = HeaderRewrite.upstreamRequest(request, framing: framing, client: info, scheme: client is TLSStream ? "https" : "http",
                                                 answeredContinue: expectsContinue && framing != .none, upstream: upstream)
        var headBytes: [UInt8] = []
        // A held body (up to 64 KiB, and what the client buffer holds) goes out in the same send
        // as the head and stays in the client buffer until the response starts: harp can send it again.
        var bodyFraming = framing
        var heldBody = 0
        if case .length(let count) = framing, count <= inbound.count, count <= Self.heldBodyLimit {
            heldBody = count
            bodyFraming = .none
        }
        headBytes.reserveCapacity(1024 + heldBody)
        HeadWriter.request(head, into: &headBytes)
        if heldBody > 0 { headBytes.append(contentsOf: inbound.readable[0..<heldBody]) }

        // A reused connection may have been closed by the upstream just now (the pool's peek
        // catches a close that has arrived; one racing the request is seen here). If nothing
        // came back, an idempotent request goes again on a fresh connection when harp can
        // replay it: no body, a held body, or a body none of which has left. Other methods get
        // 502, as from nginx: the upstream may have applied a POST before it closed, and a
        // proxy must not send it twice (RFC 9110 §9.2.2). docs/architecture.md, "Retries".
        var attempt = 0
        while true {
            attempt += 1
            let connection: UpstreamConnection
            switch await connect(upstream, fresh: attempt > 1) {
            case .success(let opened): connection = opened
            case .failure(let status):
                exchange.status = status
                await respond(status: status, keepAlive: framing == .none && request.wantsKeepAlive)
                return framing == .none && request.wantsKeepAlive
            }
            let outcome = await exchangeOnce(request, headBytes: headBytes, framing: bodyFraming, heldBody: heldBody,
                                             connection: connection, answerContinue: answerContinue && attempt == 1, exchange)
            switch outcome {
            case .done(let keepAlive):
                return keepAlive
            case .retry where attempt == 1 && connection.reused && request.isIdempotent && !exchange.sawResponseHead
                    && (bodyFraming == .none || !exchange.requestBodyStarted):
                shared.metrics.upstreamRetried()
                shared.logger.debug("reused upstream connection was closed; retrying", metadata: ["upstream": "\(upstream)"])
                continue
            case .retry, .upstreamFailed, .upstreamTimedOut:
                // The client may go on if its whole request has been read.
                let status = outcome == .upstreamTimedOut ? 504 : 502
                let keepAlive = request.wantsKeepAlive && (framing == .none || exchange.requestBodyDone)
                exchange.status = status
                await respond(status: status, keepAlive: keepAlive)
                return keepAlive
            case .clientGone:
                return false
            }
        }
    }

    struct UpstreamConnection {
        let stream: any ByteStream
        let reused: Bool
    }

    enum ConnectResult {
        case success(UpstreamConnection)
        case failure(status: Int)
    }

    private func connect(_ upstream: Upstream, fresh: Bool = false) async -> ConnectResult {
        if !fresh, let stream = shared.pool(for: loop).take(upstream) { return .success(UpstreamConnection(stream: stream, reused: true)) }
        do {
            let stream = try await shared.dialer.dial(upstream.address, on: loop, tls: shared.upstreamTLS(for: upstream),
                                                      serverName: upstream.serverName)
            shared.metrics.upstreamConnectionOpened()
            shared.pool(for: loop).opened(upstream)
            return .success(UpstreamConnection(stream: stream, reused: false))
        } catch {
            shared.metrics.upstreamConnectFailed()
            shared.logger.warning("upstream connect failed", metadata: ["upstream": "\(upstream)", "error": "\(error)"])
            return .failure(status: site.unreachableStatus ?? (error.timedOut ? 504 : 502))
        }
    }

    enum ExchangeOutcome: Equatable {
        case done(keepAlive: Bool)
        /// The upstream closed before answering anything: an idempotent request may go again.
        case retry
        case upstreamFailed
        case upstreamTimedOut
        case clientGone
    }

    /// One try of an exchange on one upstream connection, in its three steps: the request
    /// goes up (`sendRequest`), the final response head comes back (`finalResponseHead`, which
    /// passes 1xx on), the response goes down (`relayResponse`) — or the connection becomes a
    /// tunnel (101). `heldBody`: body bytes at the front of the client buffer that `headBytes`
    /// already carries; they are consumed once the upstream has started to answer.
    private func exchangeOnce(_ request: HTTPRequestHead, headBytes: [UInt8], framing: BodyFraming, heldBody: Int,
                              connection: UpstreamConnection, answerContinue: Bool, _ exchange: Exchange) async -> ExchangeOutcome {
        let upstream = connection.stream
        var reusable = false
        var heldBody = heldBody
        defer {
            if reusable {
                shared.pool(for: loop).give(upstream, to: exchange.upstream!)
            } else {
                shared.pool(for: loop).discard(upstream, of: exchange.upstream!)
            }
            // Not kept while the connection idles: 4 KiB from the loop's pool, or more when a
            // chunked body grew it (up to its capacity).
            responseBuffer.consume(responseBuffer.count)
            responseBuffer.release()
        }
        if let ended = await sendRequest(headBytes, framing, on: connection, answerContinue: answerContinue, exchange) { return ended }
        let response = responseBuffer
        let head: HTTPResponseHead
        switch await finalResponseHead(for: request, from: upstream, into: response, heldBody: &heldBody, exchange) {
        case .head(let final): head = final
        case .ended(let outcome): return outcome
        }
        if head.status == 101 { return await tunnel(request, head, upstream: upstream, buffered: response, exchange) }
        return await relayResponse(head, to: request, from: upstream, buffered: response, reusable: &reusable, exchange)
    }

    /// Sends the request head and body upstream (and the 100 Continue the client waits for).
    /// nil when all of it went; otherwise how the exchange ends.
    private func sendRequest(_ headBytes: [UInt8], _ framing: BodyFraming, on connection: UpstreamConnection, answerContinue: Bool,
                             _ exchange: Exchange) async -> ExchangeOutcome? {
        let sent = await connection.stream.write(headBytes, timeout: config.serverTimeout.duration)
        guard sent == 0 else { return connection.reused ? .retry : .upstreamFailed }
        if answerContinue {
            guard await sendToClient(Self.continueBytes) else { return .clientGone }
        }
        switch await forwardRequestBody(framing, to: connection.stream, exchange) {
        case .ok:
            exchange.requestBodyDone = true
            return nil
        case .clientFailed: return .clientGone
        case .upstreamFailed: return .upstreamFailed
        case .tooLarge:
            exchange.status = 413
            await respond(status: 413, keepAlive: false)
            return .clientGone
        case .invalid(let error):
            exchange.status = error.status
            await respond(status: error.status, keepAlive: false)
            return .clientGone
        }
    }

    private enum FinalHead {
        case head(HTTPResponseHead)
        case ended(ExchangeOutcome)
    }

    /// Reads response heads until the final one or a 101, passing 1xx interim responses (103
    /// Early Hints, a 100 we did not answer) to the client. Once the upstream has answered,
    /// the request body held in the client buffer is released.
    private func finalResponseHead(for request: HTTPRequestHead, from upstream: any ByteStream, into response: ReadBuffer, heldBody: inout Int,
                                   _ exchange: Exchange) async -> FinalHead {
        while true {
            let head: HTTPResponseHead
            switch await readResponseHead(from: upstream, into: response) {
            case .head(let parsed):
                head = parsed
                exchange.sawResponseHead = true
                if heldBody > 0 {
                    inbound.consume(heldBody)
                    exchange.requestBytes += heldBody
                    heldBody = 0
                }
            // Only a connection that answered nothing may be retried (a 1xx counts as an answer).
            case .closedEarly: return .ended(response.isEmpty && !exchange.sawResponseHead ? .retry : .upstreamFailed)
            case .timedOut: return .ended(.upstreamTimedOut)
            case .invalid(let error):
                shared.logger.warning("invalid upstream response", metadata: ["upstream": "\(exchange.upstream!)", "error": "\(error)"])
                return .ended(.upstreamFailed)
            }
            exchange.status = head.status
            if head.status == 101 { return .head(head) }
            if head.status >= 200 {
                shared.upgradeHandler(for: request)?.upgradeEnded(refused: false)
                return .head(head)
            }
            var bytes: [UInt8] = []
            HeadWriter.response(HeaderRewrite.clientResponse(head, framing: .none, keepAlive: true, clientMinorVersion: request.minorVersion),
                                into: &bytes)
            if request.minorVersion >= 1 { guard await sendToClient(bytes) else { return .ended(.clientGone) } }
        }
    }

    /// Sends the final response to the client: its head, with a small body in the same send
    /// (one syscall, one ring round trip and, over TLS, one record less per small response),
    /// then the rest of the body. `reusable`: whether the upstream connection may serve another
    /// request.
    private func relayResponse(_ head: HTTPResponseHead, to request: HTTPRequestHead, from upstream: any ByteStream, buffered response: ReadBuffer,
                               reusable: inout Bool, _ exchange: Exchange) async -> ExchangeOutcome {
        let responseFraming: BodyFraming
        do {
            responseFraming = try MessageFraming.response(head, requestMethod: request.method)
        } catch {
            return .upstreamFailed
        }
        let chunkedToOldClient = responseFraming == .chunked && request.minorVersion == 0
        let clientKeepAlive = request.wantsKeepAlive && responseFraming != .untilClose && !chunkedToOldClient
            && shared.acceptingNewRequests
        var bytes: [UInt8] = []
        if case .length(let count) = responseFraming, count <= Self.coalescedResponseLimit {
            bytes.reserveCapacity(1024 + count)
        } else {
            bytes.reserveCapacity(1024)
        }
        HeadWriter.response(HeaderRewrite.clientResponse(head, framing: responseFraming, keepAlive: clientKeepAlive,
                                                         clientMinorVersion: request.minorVersion), into: &bytes)
        // A small body that did not all come with the head is waited for (it fits the buffer).
        var bodyFraming = responseFraming
        if case .length(let count) = responseFraming, bytes.count + count <= Self.coalescedResponseLimit {
            while response.count < count {
                let space = response.writable
                guard !space.isEmpty else { break }
                let received = await upstream.read(into: UnsafeMutableRawBufferPointer(rebasing: space.prefix(count - response.count)),
                                                   timeout: config.serverTimeout.duration)
                // Nothing has reached the client yet: it gets a clean 504 or 502.
                if received == -Int(ETIMEDOUT) { return .upstreamTimedOut }
                guard received > 0 else { return .upstreamFailed }
                response.didWrite(received)
            }
        }
        if case .length(let count) = responseFraming, !response.isEmpty, bytes.count + min(count, response.count) <= Self.coalescedWriteLimit {
            let take = min(count, response.count)
            bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: response.readable[0..<take]))
            response.consume(take)
            exchange.responseBytes += take
            bodyFraming = take == count ? .none : .length(count - take)
        }
        guard await sendToClient(bytes) else { return .clientGone }
        switch await forwardResponseBody(bodyFraming, from: upstream, buffered: response, rechunk: !chunkedToOldClient, exchange) {
        case .ok: break
        case .clientFailed: return .clientGone
        case .upstreamFailed, .invalid, .tooLarge: return .clientGone  // head already sent: cut the client off
        }
        reusable = head.minorVersion >= 1 && !head.headers.contains(.connection, token: "close") && responseFraming != .untilClose
            && response.isEmpty
        return .done(keepAlive: clientKeepAlive)
    }

    static let continueBytes = Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)

    /// Responses up to this size (head and body) are sent with one write: one TLS record.
    static let coalescedResponseLimit = 16 * 1024
    /// Body bytes that came with a response head are sent with it while the write stays
    /// under this.
    static let coalescedWriteLimit = 64 * 1024
    /// A request body that came whole with its head, up to this size, is sent with the head
    /// and kept until the response starts, so a request on a connection the upstream closed
    /// meanwhile can be sent again.
    static let heldBodyLimit = 64 * 1024

    // MARK: Response head and upgrades

    enum ResponseHeadResult {
        case head(HTTPResponseHead)
        case closedEarly
        case timedOut
        case invalid(HTTPError)
    }

    private func readResponseHead(from upstream: any ByteStream, into buffer: ReadBuffer) async -> ResponseHeadResult {
        var decoder = ResponseHeadDecoder(parser: shared.parser)
        // The request has just gone out: the response cannot be there yet.
        switch await FramedReader(stream: upstream, buffer: buffer).next(&decoder, timeout: config.serverTimeout.duration,
                                                                          expectingWait: true) {
        case .frame(let head, let length, _):
            buffer.consume(length)
            return .head(head)
        case .invalid(let error):
            return .invalid(error)
        case .full:
            return .invalid(HTTPError(502, "response head too large"))
        case .ended(let result):
            return result == -Int(ETIMEDOUT) ? .timedOut : .closedEarly
        }
    }

    /// 101 Switching Protocols: pass the head on, flush what each side already sent, then
    /// splice both ways until both are done (idle limit: the tunnel timeout).
    private func tunnel(_ request: HTTPRequestHead, _ head: HTTPResponseHead, upstream: any ByteStream,
                        buffered response: ReadBuffer, _ exchange: Exchange) async -> ExchangeOutcome {
        var bytes: [UInt8] = []
        HeadWriter.response(HeaderRewrite.clientResponse(head, framing: .none, keepAlive: true, clientMinorVersion: 1), into: &bytes)
        if !response.isEmpty { bytes.append(contentsOf: response.readable) }
        guard await sendToClient(bytes) else { return .clientGone }
        if !inbound.isEmpty {
            let sent = await upstream.write(inbound.readable, timeout: config.serverTimeout.duration)
            inbound.consume(inbound.count)
            guard sent == 0 else { return .clientGone }
        }
        shared.metrics.tunnelOpened()
        let result: RelayResult
        if let handler = shared.upgradeHandler(for: request) {
            result = await handler.tunnel(UpgradedConnection(loop: loop, client: client, upstream: upstream, request: request,
                                                             response: head, idleTimeout: config.tunnelTimeout.duration))
        } else {
            result = await loop.relay(client, upstream, idleTimeout: config.tunnelTimeout.duration)
        }
        shared.metrics.tunnelClosed()
        exchange.requestBytes += result.forwardBytes
        exchange.responseBytes += result.backwardBytes
        return .done(keepAlive: false)
    }

    // MARK: Writing to the client

    private func sendToClient(_ bytes: [UInt8]) async -> Bool {
        await client.write(bytes, timeout: config.clientTimeout.duration) == 0
    }

    private func sendToClient(_ bytes: UnsafeRawBufferPointer) async -> Bool {
        await client.write(bytes, timeout: config.clientTimeout.duration) == 0
    }

    private func respond(status: Int, body: String? = nil, keepAlive: Bool) async {
        _ = await sendToClient(CannedResponse.bytes(status: status, body: body, keepAlive: keepAlive))
    }
}
