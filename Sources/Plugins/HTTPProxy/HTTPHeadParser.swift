import HarpKernel
/// Strict HTTP/1.1 head parsing (RFC 9112 §2–§5), on bytes, without buffering beyond the head.
///
/// Strictness is the defence against request smuggling: anything two implementations could
/// read differently (bare CR or LF, obs-fold, whitespace before the colon, control bytes,
/// conflicting framing headers) is refused rather than guessed at.
public struct HTTPHeadParser: Sendable {
    public var maxHeadBytes: Int
    public var maxTargetBytes: Int

    public init(maxHeadBytes: Int = 32 * 1024, maxTargetBytes: Int = 8 * 1024) {
        self.maxHeadBytes = maxHeadBytes
        self.maxTargetBytes = maxTargetBytes
    }

    public enum Outcome<Head> {
        /// No complete head yet; `scanned` bytes need not be searched again.
        case incomplete(scanned: Int)
        /// A head of `length` bytes (including the final CRLF CRLF).
        case complete(Head, length: Int)
        case invalid(HTTPError)
    }

    /// Finds the end of the head (CRLF CRLF) in `bytes`, starting the search at `from`.
    static func headEnd(_ bytes: UnsafeRawBufferPointer, from: Int) -> Int? {
        guard bytes.count >= 4 else { return nil }
        var i = max(from, 0)
        while i + 3 < bytes.count {
            if bytes[i + 3] != 0x0A { i += bytes[i + 3] == 0x0D ? 1 : 4; continue }
            if bytes[i] == 0x0D && bytes[i + 1] == 0x0A && bytes[i + 2] == 0x0D { return i + 4 }
            i += 1
        }
        return nil
    }

    public func parseRequest(_ bytes: UnsafeRawBufferPointer, scanFrom: Int = 0) -> Outcome<HTTPRequestHead> {
        var start = 0
        // RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line.
        while start + 1 < bytes.count && bytes[start] == 0x0D && bytes[start + 1] == 0x0A { start += 2 }
        guard let end = Self.headEnd(bytes, from: max(scanFrom, start)) else {
            if let problem = checkIncompleteRequest(bytes, start: start) { return .invalid(problem) }
            return .incomplete(scanned: max(0, bytes.count - 3))
        }
        if end - start > maxHeadBytes { return .invalid(HTTPError(431, "request header section over \(maxHeadBytes) bytes")) }
        do {
            var lines = LineReader(bytes: bytes, start: start, end: end)
            let line = try lines.next()!
            let head = try parseRequestLine(bytes, line)
            var request = HTTPRequestHead(method: head.method, target: head.target, minorVersion: head.minor)
            request.headers = try parseFields(bytes, &lines)
            try Self.adoptAbsoluteForm(&request)
            try checkHost(request)
            return .complete(request, length: end)
        } catch let error as HTTPError {
            return .invalid(error)
        } catch {
            return .invalid(.bad("\(error)"))
        }
    }

    public func parseResponse(_ bytes: UnsafeRawBufferPointer, scanFrom: Int = 0) -> Outcome<HTTPResponseHead> {
        guard let end = Self.headEnd(bytes, from: scanFrom) else {
            if bytes.count > maxHeadBytes { return .invalid(HTTPError(502, "response header section over \(maxHeadBytes) bytes")) }
            return .incomplete(scanned: max(0, bytes.count - 3))
        }
        if end > maxHeadBytes { return .invalid(HTTPError(502, "response header section over \(maxHeadBytes) bytes")) }
        do {
            var lines = LineReader(bytes: bytes, start: 0, end: end)
            let line = try lines.next()!
            var response = try parseStatusLine(bytes, line)
            response.headers = try parseFields(bytes, &lines)
            return .complete(response, length: end)
        } catch let error as HTTPError {
            return .invalid(HTTPError(502, "upstream sent an invalid response head: \(error.reason)"))
        } catch {
            return .invalid(HTTPError(502, "\(error)"))
        }
    }

    /// Before the head is complete: refuse early what can already be judged (an over-long
    /// target, an oversized head, bytes that can never start a request).
    private func checkIncompleteRequest(_ bytes: UnsafeRawBufferPointer, start: Int) -> HTTPError? {
        let firstLineEnd = (start..<bytes.count).first { bytes[$0] == 0x0A } ?? bytes.count
        if firstLineEnd - start > maxTargetBytes + 32 {
            let spaces = (start..<firstLineEnd).filter { bytes[$0] == 0x20 }.count
            if spaces >= 1 { return HTTPError(414, "request target over \(maxTargetBytes) bytes") }
            return .bad("request line too long")
        }
        if bytes.count - start > maxHeadBytes { return HTTPError(431, "request header section over \(maxHeadBytes) bytes") }
        for i in start..<min(bytes.count, start + 16) where !Self.isTchar(bytes[i]) {
            if bytes[i] == 0x20 && i > start { break }
            return .bad("invalid byte 0x\(String(bytes[i], radix: 16)) in the request line")
        }
        return nil
    }

    private func parseRequestLine(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>) throws -> (method: String, target: String, minor: Int) {
        guard let firstSpace = line.first(where: { bytes[$0] == 0x20 }), firstSpace > line.lowerBound else {
            throw HTTPError.bad("malformed request line")
        }
        for i in line.lowerBound..<firstSpace where !Self.isTchar(bytes[i]) {
            throw HTTPError.bad("invalid byte in the method")
        }
        guard let secondSpace = (firstSpace + 1..<line.upperBound).first(where: { bytes[$0] == 0x20 }),
              secondSpace > firstSpace + 1 else {
            throw HTTPError.bad("malformed request line")
        }
        if secondSpace - firstSpace - 1 > maxTargetBytes {
            throw HTTPError(414, "request target over \(maxTargetBytes) bytes")
        }
        for i in firstSpace + 1..<secondSpace where !(0x21...0x7E).contains(bytes[i]) {
            throw HTTPError.bad("invalid byte 0x\(String(bytes[i], radix: 16)) in the request target")
        }
        let minor = try parseVersion(bytes, secondSpace + 1..<line.upperBound)
        return (Self.ascii(bytes, line.lowerBound..<firstSpace), Self.ascii(bytes, firstSpace + 1..<secondSpace), minor)
    }

    /// `HTTP/1.0` or `HTTP/1.1`; another well-formed version is 505, anything else 400.
    private func parseVersion(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) throws -> Int {
        let at = range.lowerBound
        guard range.count == 8, bytes[at] == UInt8(ascii: "H"), bytes[at + 1] == UInt8(ascii: "T"), bytes[at + 2] == UInt8(ascii: "T"),
              bytes[at + 3] == UInt8(ascii: "P"), bytes[at + 4] == UInt8(ascii: "/"),
              Self.isDigit(bytes[range.lowerBound + 5]), bytes[range.lowerBound + 6] == 0x2E,
              Self.isDigit(bytes[range.lowerBound + 7]) else {
            throw HTTPError.bad("malformed HTTP version")
        }
        guard bytes[range.lowerBound + 5] == 0x31, bytes[range.lowerBound + 7] <= 0x31 else {
            throw HTTPError(505, "HTTP version not supported")
        }
        return Int(bytes[range.lowerBound + 7] - 0x30)
    }

    private func parseStatusLine(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>) throws -> HTTPResponseHead {
        guard line.count >= 12, bytes[line.lowerBound + 8] == 0x20 else { throw HTTPError.bad("malformed status line") }
        let minor = try parseVersion(bytes, line.lowerBound..<line.lowerBound + 8)
        let digits = line.lowerBound + 9..<line.lowerBound + 12
        guard digits.allSatisfy({ Self.isDigit(bytes[$0]) }) else { throw HTTPError.bad("malformed status code") }
        let status = digits.reduce(0) { $0 * 10 + Int(bytes[$1] - 0x30) }
        guard status >= 100 else { throw HTTPError.bad("status code below 100") }
        var reason = ""
        if line.count > 12 {
            guard bytes[line.lowerBound + 12] == 0x20 else { throw HTTPError.bad("malformed status line") }
            let range = line.lowerBound + 13..<line.upperBound
            for i in range where !Self.isFieldValueByte(bytes[i]) { throw HTTPError.bad("invalid byte in the reason phrase") }
            reason = Self.text(bytes, range)
        }
        return HTTPResponseHead(status: status, reason: reason, minorVersion: minor)
    }

    private func parseFields(_ bytes: UnsafeRawBufferPointer, _ lines: inout LineReader) throws -> HTTPHeaders {
        // Room for what the proxy adds (X-Forwarded-*, framing) without growing.
        var headers = HTTPHeaders(reservingBytes: lines.end - lines.position + 256)
        while let line = try lines.next() {
            if line.isEmpty { break }
            let first = bytes[line.lowerBound]
            if first == 0x20 || first == 0x09 { throw HTTPError.bad("obsolete line folding") }
            // One pass over the name: it ends at the first byte that is not a tchar, which
            // must be the colon; the line is looked at again only to word an error.
            var colon = line.lowerBound
            while colon < line.upperBound && Self.isTchar(bytes[colon]) { colon += 1 }
            guard colon > line.lowerBound, colon < line.upperBound, bytes[colon] == 0x3A else {
                guard colon > line.lowerBound, line[colon...].contains(where: { bytes[$0] == 0x3A }) else {
                    throw HTTPError.bad("header line without a name and colon")
                }
                throw HTTPError.bad(bytes[colon] == 0x20 || bytes[colon] == 0x09
                    ? "whitespace between a header name and the colon" : "invalid byte in a header name")
            }
            var valueStart = colon + 1, valueEnd = line.upperBound
            while valueStart < valueEnd && (bytes[valueStart] == 0x20 || bytes[valueStart] == 0x09) { valueStart += 1 }
            while valueEnd > valueStart && (bytes[valueEnd - 1] == 0x20 || bytes[valueEnd - 1] == 0x09) { valueEnd -= 1 }
            for i in valueStart..<valueEnd where !Self.isFieldValueByte(bytes[i]) {
                throw HTTPError.bad("invalid byte 0x\(String(bytes[i], radix: 16)) in header \(Self.ascii(bytes, line.lowerBound..<colon))")
            }
            headers.append(name: UnsafeRawBufferPointer(rebasing: bytes[line.lowerBound..<colon]),
                           value: UnsafeRawBufferPointer(rebasing: bytes[valueStart..<valueEnd]))
        }
        return headers
    }

    /// RFC 9112 §3.2.2: a server must accept an absolute-form target (`GET http://host/path`);
    /// it routes on the target's path and takes the host from the target, whatever Host said.
    static func adoptAbsoluteForm(_ request: inout HTTPRequestHead) throws {
        let target = request.target.utf8
        guard let first = target.first, first != UInt8(ascii: "/"), first != UInt8(ascii: "*") else { return }
        let lowered = request.target.prefix(8).lowercased()
        let schemeLength = lowered.hasPrefix("http://") ? 7 : lowered.hasPrefix("https://") ? 8 : 0
        // authority-form (CONNECT host:port) and anything else is left to routing (404).
        guard schemeLength > 0 else { return }
        let rest = request.target.utf8.dropFirst(schemeLength)
        let authorityEnd = rest.firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") } ?? rest.endIndex
        let authority = String(rest[..<authorityEnd])!
        guard !authority.isEmpty, !authority.contains("@") else { throw HTTPError.bad("invalid authority in an absolute-form target") }
        var path = String(rest[authorityEnd...])!
        if !path.hasPrefix("/") { path = "/" + path }
        request.target = path
        request.headers.remove(.host)
        request.headers.add(.host, authority)
    }

    /// RFC 9112 §3.2: exactly one Host in HTTP/1.1 requests, with a sane value.
    private func checkHost(_ request: HTTPRequestHead) throws {
        let count = request.headers.count(of: .host)
        if request.minorVersion >= 1 && count != 1 { throw HTTPError.bad(count == 0 ? "missing Host header" : "several Host headers") }
        if count > 1 { throw HTTPError.bad("several Host headers") }
        if let host = request.headers.firstValueBytes(.host),
           host.contains(where: { $0 == 0x20 || $0 == 0x09 || $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "@") }) {
            throw HTTPError.bad("invalid Host header")
        }
    }

    /// Yields the lines of the head, each without its CRLF; a bare CR or LF is an error.
    struct LineReader {
        let bytes: UnsafeRawBufferPointer
        var position: Int
        let end: Int

        init(bytes: UnsafeRawBufferPointer, start: Int, end: Int) {
            self.bytes = bytes
            position = start
            self.end = end
        }

        mutating func next() throws -> Range<Int>? {
            guard position < end else { return nil }
            var i = position
            while i < end {
                let byte = bytes[i]
                if byte == 0x0D {
                    guard i + 1 < end, bytes[i + 1] == 0x0A else { throw HTTPError.bad("bare CR in the head") }
                    let line = position..<i
                    position = i + 2
                    return line
                }
                if byte == 0x0A { throw HTTPError.bad("bare LF in the head") }
                i += 1
            }
            throw HTTPError.bad("unterminated line")
        }
    }

    // MARK: Byte classes (RFC 9110 §5.6.2, §5.5)

    @inline(__always) static func isDigit(_ byte: UInt8) -> Bool { byte >= 0x30 && byte <= 0x39 }

    /// RFC 9110 §5.6.2 token characters as two bit sets (bytes 0-63 and 64-127): a shift
    /// and a mask per byte, no table to load.
    @inline(__always) static func isTchar(_ byte: UInt8) -> Bool {
        if byte < 64 { return (0x03FF_6CFA_0000_0000 as UInt64) >> byte & 1 == 1 }
        if byte < 128 { return (0x57FF_FFFF_C7FF_FFFE as UInt64) >> (byte - 64) & 1 == 1 }
        return false
    }

    /// field-vchar, SP and HTAB; obs-text (0x80–0xFF) is kept as opaque bytes.
    @inline(__always) static func isFieldValueByte(_ byte: UInt8) -> Bool {
        byte == 0x09 || (byte >= 0x20 && byte != 0x7F)
    }

    static func ascii(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self)
    }

    /// Header values may carry obs-text; map bytes 1:1 to scalars (Latin-1) so that they are
    /// forwarded unchanged (see `HeadWriter`).
    static func text(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> String {
        let slice = UnsafeRawBufferPointer(rebasing: bytes[range])
        if slice.allSatisfy({ $0 < 0x80 }) { return String(decoding: slice, as: UTF8.self) }
        var out = String.UnicodeScalarView()
        for byte in slice { out.append(Unicode.Scalar(byte)) }
        return String(out)
    }
}

/// A head the parser can read: request or response.
protocol ParsedHead {
    static func parse(_ parser: HTTPHeadParser, _ bytes: UnsafeRawBufferPointer, scanFrom: Int) -> HTTPHeadParser.Outcome<Self>
}

extension HTTPRequestHead: ParsedHead {
    static func parse(_ parser: HTTPHeadParser, _ bytes: UnsafeRawBufferPointer, scanFrom: Int) -> HTTPHeadParser.Outcome<Self> {
        parser.parseRequest(bytes, scanFrom: scanFrom)
    }
}

extension HTTPResponseHead: ParsedHead {
    static func parse(_ parser: HTTPHeadParser, _ bytes: UnsafeRawBufferPointer, scanFrom: Int) -> HTTPHeadParser.Outcome<Self> {
        parser.parseResponse(bytes, scanFrom: scanFrom)
    }
}

/// The head parser as a `FrameDecoder` for the kernel's `FramedReader`: it remembers how far
/// it scanned, so bytes that trickle in are not scanned again.
struct HeadDecoder<Head: ParsedHead>: FrameDecoder {
    let parser: HTTPHeadParser
    var scanned = 0

    mutating func decode(_ bytes: UnsafeRawBufferPointer) -> FrameDecision<Head, HTTPError> {
        switch Head.parse(parser, bytes, scanFrom: scanned) {
        case .complete(let head, let length): return .frame(head, headerLength: length, payloadLength: 0)
        case .invalid(let error): return .invalid(error)
        case .incomplete(let scannedSoFar):
            scanned = scannedSoFar
            return .needMore
        }
    }
}

typealias RequestHeadDecoder = HeadDecoder<HTTPRequestHead>
typealias ResponseHeadDecoder = HeadDecoder<HTTPResponseHead>
