import Foundation
import Glibc
import HarpKernel
@testable import HTTPProxy
import HarpTestSupport
import Logging
import Synchronization
import Testing

/// What a gateway plugin (ExApps) builds on, driven through the public API on real sockets:
/// a route provider that answers with its own headers and content type, the per-request
/// context it shares with response observers, and the pooled HTTP client.
@Suite("gateway extension points", .serialized)
struct GatewayAPITests {
    /// Answers `/reply` itself, forwards `/app/…` (leaving a note for the observer).
    struct TestProvider: RouteProvider {
        let upstream: Upstream
        func route(_ request: inout HTTPRequestHead, client: ClientInfo, exchange: Exchange) async -> RouteDecision? {
            if request.path == "/reply" {
                return .respond(status: 401, body: "{\"error\":\"no\"}", contentType: "application/json",
                                headers: [("WWW-Authenticate", "Bearer")])
            }
            if request.path.hasPrefix("/app/") {
                exchange.context = "app-route"
                request.target = String(request.target.dropFirst(4))
                return .forward(upstream)
            }
            return nil
        }
    }

    final class Observed: ResponseObserver, @unchecked Sendable {
        // @unchecked Sendable: the Mutex guards the list.
        let seen = Mutex<[String]>([])
        func observe(_ exchange: Exchange, client: ClientInfo) {
            seen.withLock { $0.append("\(exchange.status) \((exchange.context as? String) ?? "-")") }
        }
    }

    @Test("a provider's reply keeps its body, content type and headers; its context reaches the observers")
    func providerReplyAndContext() async throws {
        let origin = try HTTPTestOrigin()
        defer { origin.stop() }
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        var configuration = HTTPProxyConfiguration()
        configuration.listen = [loopback(0)]
        let context = PluginContext(loops: [loop], logger: Logger(label: "test"), settings: HarpSettings())
        let plugin = try HTTPProxyPlugin(configuration: configuration, context: context)
        plugin.addRouteProvider(TestProvider(upstream: Upstream(address: origin.address)))
        let observed = Observed()
        plugin.addObserver(observed)
        try await plugin.start()
        let port = plugin.boundAddresses[0].port!
        let reply = try shell("curl -s -i http://127.0.0.1:\(port)/reply").output
        #expect(reply.hasPrefix("HTTP/1.1 401 Unauthorized\r\n"), "\(reply)")
        #expect(reply.contains("Content-Type: application/json\r\n"))
        #expect(reply.contains("WWW-Authenticate: Bearer\r\n"))
        #expect(reply.hasSuffix("\r\n\r\n{\"error\":\"no\"}"), "the body is sent byte for byte: \(reply)")
        let forwarded = try shell("curl -s http://127.0.0.1:\(port)/app/hello").output
        #expect(forwarded == "ok")
        _ = try shell("curl -s http://127.0.0.1:\(port)/elsewhere")
        await plugin.stopAccepting()
        #expect(observed.seen.withLock { $0 } == ["401 -", "200 app-route", "404 -"])
    }

    @Test("HTTPClient: lengths, chunked bodies, POST bodies, kept-alive reuse, timeouts (a dripping server too), a body over the limit")
    func client() async throws {
        let origin = try HTTPTestOrigin()
        defer { origin.stop() }
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        let client = try HTTPClient(loops: [loop], responseTimeout: .seconds(1), maxBodySize: 64 * 1024)
        let upstream = Upstream(address: origin.address)
        let results = await loop.spawn { () -> [String] in
            var out: [String] = []
            func describe(_ result: Result<HTTPClientResponse, HTTPClientError>) -> String {
                switch result {
                case .success(let response): "\(response.status) \(response.body.count) \(String(decoding: response.body.prefix(12), as: UTF8.self))"
                case .failure(let error): "error: \(error)"
                }
            }
            func call(_ method: String, _ target: String, body: [UInt8] = []) async -> String {
                do {
                    return describe(.success(try await client.request(method, upstream, target: target, body: body, on: loop)))
                } catch {
                    return describe(.failure(error))
                }
            }
            out.append(await call("GET", "/hello"))
            out.append(await call("GET", "/chunked/5000"))
            out.append(await call("POST", "/hash", body: Array("abc".utf8)))
            out.append(await call("GET", "/close"))
            out.append(await call("GET", "/slow/3000"))
            out.append(await call("GET", "/chunked/100000"))
            out.append(await call("GET", "/drip/10"))
            return out
        }.value
        #expect(results[0] == "200 2 ok")
        #expect(results[1] == "200 5000 xxxxxxxxxxxx")
        #expect(results[2] == "200 66 ba7816bf8f01", "sha256(abc) and the length: \(results[2])")
        #expect(results[3].hasPrefix("200 "))
        #expect(results[4] == "error: no complete response in time")
        #expect(results[5] == "error: invalid response: body over 65536 bytes")
        #expect(results[6] == "error: no complete response in time", "the whole response within the limit, not each read")
        // The first three went over one kept-alive connection.
        #expect(origin.requests.load(ordering: .relaxed) == 7)
        #expect(origin.connections <= 4, "connections: \(origin.connections)")
    }
}
