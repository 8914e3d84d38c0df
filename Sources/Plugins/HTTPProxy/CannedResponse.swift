/// Responses harp writes itself: a short `text/plain` body naming the status.
enum CannedResponse {
    static func bytes(status: Int, body: String? = nil, keepAlive: Bool, extraHeaders: [(String, String)] = []) -> [UInt8] {
        let text = (body ?? "\(status) \(reason(status))") + "\n"
        return bytes(Reply(status: status, body: Array(text.utf8), headers: extraHeaders), keepAlive: keepAlive)
    }

    /// A route provider's reply: its body byte for byte, its content type and fields.
    static func bytes(_ reply: Reply, keepAlive: Bool) -> [UInt8] {
        var head = HTTPResponseHead(status: reply.status, reason: reason(reply.status))
        // 204 and 304 have no body, and a 204 must not say how long it is (RFC 9110 §8.6).
        let bodyless = reply.status == 204 || reply.status == 304
        if !bodyless {
            head.headers.add("Content-Type", reply.contentType)
            head.headers.add(.contentLength, "\(reply.body.count)")
        }
        head.headers.add(.connection, keepAlive ? "keep-alive" : "close")
        for (name, value) in reply.headers { head.headers.add(name, value) }
        var out: [UInt8] = []
        out.reserveCapacity(256 + reply.body.count)
        HeadWriter.response(head, into: &out)
        if !bodyless { out.append(contentsOf: reply.body) }
        return out
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 100: "Continue"
        case 200: "OK"
        case 201: "Created"
        case 204: "No Content"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 408: "Request Timeout"
        case 409: "Conflict"
        case 411: "Length Required"
        case 413: "Content Too Large"
        case 414: "URI Too Long"
        case 431: "Request Header Fields Too Large"
        case 500: "Internal Server Error"
        case 501: "Not Implemented"
        case 502: "Bad Gateway"
        case 503: "Service Unavailable"
        case 504: "Gateway Timeout"
        case 505: "HTTP Version Not Supported"
        default: "Status \(status)"
        }
    }
}
