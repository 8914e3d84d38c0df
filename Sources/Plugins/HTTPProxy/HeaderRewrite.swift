import HarpKernel

/// Header changes a proxy makes (RFC 9110 §7.6.1): hop-by-hop fields stay on their hop, and
/// the X-Forwarded-* fields tell the upstream who the client was.
enum HeaderRewrite {
    /// Removes hop-by-hop fields and those the Connection header names. Runs on every request
    /// and response: the usual `Connection: keep-alive` or `close` names nothing more, so
    /// nothing is collected.
    static func removeHopByHop(_ headers: inout HTTPHeaders) {
        var named: [ArraySlice<UInt8>] = []
        headers.forEachValue(.connection) { token in
            if KnownField(name: token)?.isHopByHop != true { named.append(token) }
            return true
        }
        let storage = headers.storage
        headers.removeFields { field in
            field.known?.isHopByHop == true || named.contains { storage[field.name].equalsIgnoringASCIICase($0) }
        }
    }

    /// Whether the request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
    static func upgradeProtocol(_ request: HTTPRequestHead) -> String? {
        guard request.headers.contains(.connection, token: "upgrade"), let value = request.headers[.upgrade] else { return nil }
        return value
    }

    /// The head sent upstream: HTTP/1.1, hop-by-hop removed, framing re-stated, forwarded-for
    /// set. From a trusted proxy the existing X-Forwarded-* values are kept (and extended).
    static func upstreamRequest(_ request: HTTPRequestHead, framing: BodyFraming, client: ClientInfo,
                                scheme: String, answeredContinue: Bool, upstream: Upstream) -> HTTPRequestHead {
        var head = request
        let upgrade = upgradeProtocol(request)
        removeHopByHop(&head.headers)
        head.headers.remove(.contentLength)
        if answeredContinue { head.headers.remove(.expect) }
        switch framing {
        case .length(let count): head.headers.add(.contentLength, String(count))
        case .chunked: head.headers.add(.transferEncoding, "chunked")
        case .none, .untilClose: break
        }
        if let upgrade {
            head.headers.add(.upgrade, upgrade)
            head.headers.add(.connection, "upgrade")
        }
        let clientAddress = client.address
        if client.isTrustedProxy {
            let existing = head.headers.values(.xForwardedFor).filter { !$0.isEmpty }
            head.headers.set(.xForwardedFor, (existing + [clientAddress]).joined(separator: ", "))
            if head.headers[.xForwardedProto] == nil { head.headers.add(.xForwardedProto, scheme) }
            if head.headers[.xForwardedHost] == nil, let host = request.headers[.host] { head.headers.add(.xForwardedHost, host) }
        } else {
            head.headers.set(.xForwardedFor, clientAddress)
            head.headers.set(.xForwardedProto, scheme)
            if let host = request.headers[.host] { head.headers.set(.xForwardedHost, host) } else { head.headers.remove(.xForwardedHost) }
        }
        // HTTP/1.0 may omit Host, and a client may name it in Connection (removed above): the
        // HTTP/1.1 request sent upstream must have one (RFC 9112 §3.2).
        if head.headers[.host] == nil { head.headers.add(.host, upstream.authority) }
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
        if case .chunked = framing, clientMinorVersion >= 1 { head.headers.add(.transferEncoding, "chunked") }
        if response.status >= 200 {
            if !keepAlive { head.headers.add(.connection, "close") } else if clientMinorVersion == 0 { head.headers.add(.connection, "keep-alive") }
        }
        return head
    }
}
