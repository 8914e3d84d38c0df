import HarpKernel

/// Header changes a proxy makes (RFC 9110 §7.6.1): hop-by-hop fields stay on their hop, and
/// the X-Forwarded-* fields tell the upstream who the client was.
enum HeaderRewrite {
    static let hopByHop = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"]

    /// Removes hop-by-hop fields and those the Connection header names. Runs on every request
    /// and response: compares in place, without lower-casing copies.
    static func removeHopByHop(_ headers: inout HTTPHeaders) {
        let named = headers.values("Connection").filter { token in
            !hopByHop.contains { token.equalsIgnoringASCIICase($0) }
        }
        headers.removeAll { name in
            hopByHop.contains { name.equalsIgnoringASCIICase($0) } || named.contains { name.equalsIgnoringASCIICase($0) }
        }
    }

    /// Whether the request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
    static func upgradeProtocol(_ request: HTTPRequestHead) -> String? {
        guard request.headers.contains("Connection", token: "upgrade"), let value = request.headers["Upgrade"] else { return nil }
        return value
    }

    /// The head sent upstream: HTTP/1.1, hop-by-hop removed, framing re-stated, forwarded-for
    /// set. From a trusted proxy the existing X-Forwarded-* values are kept (and extended).
    static func upstreamRequest(_ request: HTTPRequestHead, framing: BodyFraming, client: ClientInfo,
                                scheme: String, answeredContinue: Bool) -> HTTPRequestHead {
        var head = request
        let upgrade = upgradeProtocol(request)
        removeHopByHop(&head.headers)
        head.headers.remove("Content-Length")
        if answeredContinue { head.headers.remove("Expect") }
        switch framing {
        case .length(let count): head.headers.add("Content-Length", "\(count)")
        case .chunked: head.headers.add("Transfer-Encoding", "chunked")
        case .none, .untilClose: break
        }
        if let upgrade {
            head.headers.add("Upgrade", upgrade)
            head.headers.add("Connection", "upgrade")
        }
        let clientAddress = client.address
        if client.isTrustedProxy {
            let existing = head.headers.values("X-Forwarded-For").map(String.init).filter { !$0.isEmpty }
            head.headers.set("X-Forwarded-For", (existing + [clientAddress]).joined(separator: ", "))
            if head.headers["X-Forwarded-Proto"] == nil { head.headers.add("X-Forwarded-Proto", scheme) }
            if head.headers["X-Forwarded-Host"] == nil, let host = request.headers["Host"] { head.headers.add("X-Forwarded-Host", host) }
        } else {
            head.headers.set("X-Forwarded-For", clientAddress)
            head.headers.set("X-Forwarded-Proto", scheme)
            if let host = request.headers["Host"] { head.headers.set("X-Forwarded-Host", host) } else { head.headers.remove("X-Forwarded-Host") }
        }
        head.minorVersion = 1
        return head
    }

    /// The head sent to the client: hop-by-hop removed and the framing and connection
    /// decision re-stated for this hop.
    static func clientResponse(_ response: HTTPResponseHead, framing: BodyFraming, keepAlive: Bool,
                               clientMinorVersion: Int) -> HTTPResponseHead {
        // 101 goes to the client unchanged: its Connection/Upgrade fields belong to the switch.
        if response.status == 101 { return response }
        var head = response
        removeHopByHop(&head.headers)
        if case .chunked = framing, clientMinorVersion >= 1 { head.headers.add("Transfer-Encoding", "chunked") }
        if response.status >= 200 {
            if !keepAlive { head.headers.add("Connection", "close") } else if clientMinorVersion == 0 { head.headers.add("Connection", "keep-alive") }
        }
        return head
    }
}
