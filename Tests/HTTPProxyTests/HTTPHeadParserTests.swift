@testable import HTTPProxy
import HarpTestSupport
import Testing

@Suite("HTTP head parsing and framing")
struct HTTPHeadParserTests {
    let parser = HTTPHeadParser(maxHeadBytes: 4096, maxTargetBytes: 256)

    func parse(_ text: String) -> HTTPHeadParser.Outcome<HTTPRequestHead> {
        Array(text.utf8).withUnsafeBytes { parser.parseRequest($0) }
    }

    func request(_ text: String) throws -> HTTPRequestHead {
        guard case .complete(let head, _) = parse(text) else { throw HTTPError.bad("not complete: \(parse(text))") }
        return head
    }

    func status(_ text: String) -> Int? {
        switch parse(text) {
        case .invalid(let error): error.status
        case .complete(let head, _): (try? MessageFraming.request(head)).map { _ in 200 } ?? 400
        case .incomplete: nil
        }
    }

    @Test("a simple GET parses with its headers in order")
    func simpleGet() throws {
        let head = try request("GET /a/b?c=d HTTP/1.1\r\nHost: example.org\r\nX-A:  1 \r\nx-a: 2\r\n\r\n")
        #expect(head.method == "GET")
        #expect(head.target == "/a/b?c=d")
        #expect(head.path == "/a/b")
        #expect(head.minorVersion == 1)
        #expect(head.headers.values("X-A") == ["1", "2"])
        #expect(head.hostWithoutPort == "example.org")
    }

    @Test("known field names are recognised in any case, look-alikes are not; lists split on commas")
    func knownFields() throws {
        for field in KnownField.allCases {
            #expect(KnownField(name: field.name) == field)
            #expect(KnownField(name: field.name.uppercased()) == field)
            #expect(KnownField(name: field.name.lowercased()) == field)
        }
        for other in ["Hosts", "Connectio", "X-Forwarded-Fox", "Content_Length", "", "T", "TF"] {
            #expect(KnownField(name: other) == nil, "\(other)")
        }
        var headers = HTTPHeaders([("connection", " keep-alive ,X-Private"), ("X-Private", "1"), ("Keep-Alive", "timeout=5"),
                                   ("Content-length", "5"), ("content-LENGTH", "5, 5"), ("X-List", "a,, b ,c")])
        #expect(headers.values(.connection) == ["keep-alive", "X-Private"])
        #expect(headers.values("x-list") == ["a", "", "b", "c"])
        #expect(headers.count(of: "CONTENT-LENGTH") == 2)
        #expect(headers.contains("Connection", token: "x-private"))
        #expect(!headers.contains(.connection, token: "close"))
        #expect(try MessageFraming.length(headers) == 5)
        HeaderRewrite.removeHopByHop(&headers)
        #expect(headers.pairs.map(\.name) == ["Content-length", "content-LENGTH", "X-List"], "Connection, what it names and Keep-Alive go")
    }

    @Test("tchar is exactly RFC 9110's token set")
    func tokenCharacters() {
        let tokens = Set("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)
        for byte in UInt8.min...UInt8.max {
            #expect(HTTPHeadParser.isTchar(byte) == tokens.contains(byte), "byte \(byte)")
        }
    }

    @Test("a bad header name says what is wrong with it", arguments: [
        ("Host : a", "whitespace between a header name and the colon"),
        ("Ho@st: a", "invalid byte in a header name"),
        (": a", "header line without a name and colon"),
        ("Host a", "header line without a name and colon"),
        ("Host", "header line without a name and colon"),
    ])
    func headerNameErrors(line: String, reason: String) {
        guard case .invalid(let error) = parse("GET / HTTP/1.1\r\n\(line)\r\n\r\n") else {
            Issue.record("\(line) was accepted")
            return
        }
        #expect(error.status == 400)
        #expect(error.reason == reason)
    }

    @Test("a value harp adds never ends its field early: U+010A is UTF-8, CR/LF/NUL become spaces")
    func addedValuesStayInTheirField() {
        var head = HTTPResponseHead(status: 200, reason: "OK")
        head.headers.add("X-User", "a\u{010A}b")
        head.headers.add("X-Evil", "v\r\nSet-Cookie: x=1\u{0}")
        var out: [UInt8] = []
        HeadWriter.response(head, into: &out)
        #expect(out == Array("HTTP/1.1 200 OK\r\nX-User: a".utf8) + [0xC4, 0x8A] + Array("b\r\nX-Evil: v  Set-Cookie: x=1 \r\n\r\n".utf8))
    }

    @Test("absolute-form targets route on their path and take the host from the target (RFC 9112 §3.2.2)")
    func absoluteForm() throws {
        let plain = try request("GET http://Files.Example.org:8080/a/b?q=1 HTTP/1.1\r\nHost: other\r\n\r\n")
        #expect(plain.target == "/a/b?q=1")
        #expect(plain.headers.values(.host) == ["Files.Example.org:8080"])
        #expect(plain.hostWithoutPort == "files.example.org")
        let bare = try request("GET HTTPS://example.org HTTP/1.0\r\n\r\n")
        #expect(bare.target == "/")
        #expect(bare.headers[.host] == "example.org")
        let query = try request("GET http://example.org?x HTTP/1.1\r\nHost: example.org\r\n\r\n")
        #expect(query.target == "/?x")
        #expect(status("GET http://user@example.org/ HTTP/1.1\r\nHost: x\r\n\r\n") == 400)
        #expect(status("GET http:///path HTTP/1.1\r\nHost: x\r\n\r\n") == 400)
    }

    @Test("obs-text in a header value is forwarded byte for byte")
    func obsText() throws {
        let raw = Array("GET / HTTP/1.1\r\nHost: x\r\nX-Name: caf".utf8) + [0xE9, 0x20, 0xFF] + Array("\r\n\r\n".utf8)
        guard case .complete(let head, _) = raw.withUnsafeBytes({ parser.parseRequest($0) }) else {
            Issue.record("not parsed")
            return
        }
        #expect(head.headers["x-name"] == "caf\u{E9} \u{FF}", "Latin-1 as a String")
        var out: [UInt8] = []
        HeadWriter.request(head, into: &out)
        #expect(out == raw, "written back unchanged")
    }

    @Test("an incomplete head asks for more bytes")
    func incomplete() {
        guard case .incomplete = parse("GET / HTTP/1.1\r\nHost: a\r\n") else { Issue.record("expected incomplete"); return }
    }

    @Test("HTTP/1.0 without Host is fine; keep-alive follows the Connection header")
    func http10() throws {
        let head = try request("GET / HTTP/1.0\r\n\r\n")
        #expect(head.minorVersion == 0)
        #expect(!head.wantsKeepAlive)
        #expect(try request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").wantsKeepAlive)
    }

    @Test("malformed requests are refused with the right status", arguments: [
        ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),                       // double space
        ("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),             // obs-fold
        ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),                       // space before colon
        ("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400),                     // bare CR
        ("GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),                  // bare LF
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\u{0}b\r\n\r\n", 400),          // NUL
        ("GET / HTTP/1.1\r\n\r\n", 400),                                    // no Host
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),             // two Hosts
        ("GET /\u{7f} HTTP/1.1\r\nHost: a\r\n\r\n", 400),                  // control in target
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        ("GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400),
        ("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),                        // bad method byte
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n", 400),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", 200),  // identical: fine
        ("GET /" + String(repeating: "a", count: 300) + " HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "b", count: 5000) + "\r\n\r\n", 431),
    ])
    func refused(text: String, expected: Int) {
        #expect(status(text) == expected, "\(text.debugDescription)")
    }

    @Test("an over-long head is refused before it is complete")
    func oversizedIncomplete() {
        let text = "GET / HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "b", count: 5000)
        guard case .invalid(let error) = parse(text) else { Issue.record("expected invalid"); return }
        #expect(error.status == 431)
    }

    @Test("response framing follows RFC 9112 §6.3")
    func responseFraming() throws {
        func framing(_ status: Int, _ headers: [(String, String)], method: String = "GET") throws -> BodyFraming {
            try MessageFraming.response(HTTPResponseHead(status: status, reason: "", headers: HTTPHeaders(headers.map { ($0.0, $0.1) })),
                                        requestMethod: method)
        }
        #expect(try framing(200, [("Content-Length", "5")]) == .length(5))
        #expect(try framing(200, [("Content-Length", "5")], method: "HEAD") == .none)
        #expect(try framing(204, []) == .none)
        #expect(try framing(304, [("Content-Length", "5")]) == .none)
        #expect(try framing(200, [("Transfer-Encoding", "gzip, chunked")]) == .chunked)
        #expect(try framing(200, [("Transfer-Encoding", "gzip")]) == .untilClose)
        #expect(try framing(200, []) == .untilClose)
        #expect(throws: HTTPError.self) { try framing(200, [("Content-Length", "x")]) }
    }

    @Test("chunked decoding: sizes, extensions and trailers")
    func chunked() throws {
        let body = Array("4;ext=1;q=\"a b\"\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer-A: x\r\n\r\nNEXT".utf8)
        var decoder = ChunkedDecoder()
        var data: [UInt8] = []
        var trailers: [(String, String)] = []
        let consumed = try body.withUnsafeBytes { raw in
            try decoder.feed(raw) { event in
                switch event {
                case .data(let range): data += raw[range]
                case .end(let found): trailers = found
                }
            }
        }
        #expect(String(decoding: data, as: UTF8.self) == "Wikipedia in\r\n\r\nchunks.")
        #expect(trailers.map(\.0) == ["Trailer-A"])
        #expect(decoder.isDone)
        #expect(consumed == body.count - 4)
    }

    @Test("chunked decoding refuses bad sizes and framing", arguments: [
        "x\r\nabc\r\n0\r\n\r\n", "\r\nabc\r\n0\r\n\r\n", "1000000000000000\r\n", "3 x\r\nabc\r\n0\r\n\r\n",
        "3;\r\nabc\r\n0\r\n\r\n", "3;a=\r\nabc\r\n0\r\n\r\n", "3\r\nabcX\r\n0\r\n\r\n", "3\nabc\r\n0\r\n\r\n",
        "-3\r\nabc\r\n0\r\n\r\n", "3;a=\"b\r\nabc\r\n0\r\n\r\n",
    ])
    func chunkedRefused(text: String) {
        var decoder = ChunkedDecoder()
        #expect(throws: HTTPError.self) {
            _ = try Array(text.utf8).withUnsafeBytes { try decoder.feed($0) { _ in } }
        }
    }

    @Test("randomized input never crashes the parsers (seeded, bounded)")
    func fuzz() {
        var generator = SeededGenerator(seed: SeededGenerator.seed(for: "HTTP parser fuzz"))
        func next() -> UInt64 { generator.next() }
        let seeds = ["GET / HTTP/1.1\r\nHost: a\r\n\r\n", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                     "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", "5;a=b\r\nhello\r\n0\r\nT: v\r\n\r\n"].map { Array($0.utf8) }
        let alphabet: [UInt8] = Array(" \r\n:;=\"\t0123456789abcdefABCDEF/HTTP.GETPOSTchunkedContent-LengthTransfer-Encoding".utf8) + [0, 0x7f, 0x80, 0xff]
        for _ in 0..<20_000 {
            var input = seeds[Int(next() % UInt64(seeds.count))]
            for _ in 0..<Int(next() % 6) {
                let position = input.isEmpty ? 0 : Int(next() % UInt64(input.count))
                switch next() % 3 {
                case 0: if !input.isEmpty { input.remove(at: position) }
                case 1: input.insert(alphabet[Int(next() % UInt64(alphabet.count))], at: position)
                default: if !input.isEmpty { input[position] = UInt8(truncatingIfNeeded: next()) }
                }
            }
            input.withUnsafeBytes { raw in
                if case .complete(let head, _) = parser.parseRequest(raw) { _ = try? MessageFraming.request(head) }
                _ = parser.parseResponse(raw)
                var decoder = ChunkedDecoder()
                _ = try? decoder.feed(raw) { _ in }
            }
        }
    }
}
