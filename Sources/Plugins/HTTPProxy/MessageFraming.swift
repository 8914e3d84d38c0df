/// Decides where a message body ends (RFC 9112 §6), refusing the ambiguous cases that make
/// request smuggling possible.
enum MessageFraming {
    static func request(_ head: HTTPRequestHead) throws(HTTPError) -> BodyFraming {
        let transferEncodings = head.headers.count(of: .transferEncoding)
        let contentLength = try length(head.headers)
        if transferEncodings > 0 {
            if contentLength != nil { throw .bad("both Content-Length and Transfer-Encoding") }
            if head.minorVersion == 0 { throw .bad("Transfer-Encoding in an HTTP/1.0 request") }
            let codings = head.headers.values(.transferEncoding)
            // Only a single `chunked` is accepted: any other coding would have to be
            // understood to find the end of the body, and a proxy must not guess.
            guard codings.count == 1, codings[0].equalsIgnoringASCIICase("chunked") else {
                throw .bad("Transfer-Encoding other than a final chunked")
            }
            return .chunked
        }
        if let contentLength { return contentLength == 0 ? .none : .length(contentLength) }
        return .none
    }

    static func response(_ head: HTTPResponseHead, requestMethod: String) throws(HTTPError) -> BodyFraming {
        if requestMethod == "HEAD" || head.status < 200 || head.status == 204 || head.status == 304 { return .none }
        if head.headers.count(of: .transferEncoding) > 0 {
            let codings = head.headers.values(.transferEncoding)
            // RFC 9112 §6.3: chunked last means chunked; otherwise the body runs to close.
            return codings.last?.equalsIgnoringASCIICase("chunked") == true ? .chunked : .untilClose
        }
        do {
            if let length = try length(head.headers) { return length == 0 ? .none : .length(length) }
        } catch {
            throw HTTPError(502, "upstream sent an invalid Content-Length")
        }
        return .untilClose
    }

    /// Content-Length: every value (repeated headers, comma lists) must be the same digits.
    static func length(_ headers: HTTPHeaders) throws(HTTPError) -> Int? {
        var found: Int?
        var problem: String?
        headers.forEachValue(.contentLength) { value in
            // At most 18 digits: always fits an Int.
            guard !value.isEmpty, value.count <= 18, value.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
                problem = "invalid Content-Length"
                return false
            }
            let number = value.reduce(0) { $0 * 10 + Int($1 - 0x30) }
            if let found, found != number {
                problem = "differing Content-Length values"
                return false
            }
            found = number
            return true
        }
        if let problem { throw .bad(problem) }
        return found
    }
}
