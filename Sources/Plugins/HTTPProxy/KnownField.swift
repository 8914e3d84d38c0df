/// The header names the proxy itself reads or rewrites. A field is recognised once, when it
/// enters `HTTPHeaders`; after that every lookup of these names is a byte compare instead of
/// a case-insensitive scan of each field name (a proxied exchange makes about twenty).
public enum KnownField: UInt8, Sendable, CaseIterable {
    case connection, contentLength, transferEncoding, host, upgrade, expect
    case keepAlive, proxyConnection, te, trailer
    case xForwardedFor, xForwardedProto, xForwardedHost

    /// The spelling harp writes.
    public var name: String {
        switch self {
        case .connection: "Connection"
        case .contentLength: "Content-Length"
        case .transferEncoding: "Transfer-Encoding"
        case .host: "Host"
        case .upgrade: "Upgrade"
        case .expect: "Expect"
        case .keepAlive: "Keep-Alive"
        case .proxyConnection: "Proxy-Connection"
        case .te: "TE"
        case .trailer: "Trailer"
        case .xForwardedFor: "X-Forwarded-For"
        case .xForwardedProto: "X-Forwarded-Proto"
        case .xForwardedHost: "X-Forwarded-Host"
        }
    }

    /// Fields that belong to one connection and are never forwarded (RFC 9110 §7.6.1).
    public var isHopByHop: Bool {
        switch self {
        case .connection, .keepAlive, .proxyConnection, .te, .trailer, .transferEncoding, .upgrade: true
        default: false
        }
    }

    public init?(name: String) { self.init(name: name.utf8) }

    /// The known field `name` spells, in any case; nil for every other name.
    public init?(name: some Collection<UInt8>) {
        // The length picks the one or two candidates, so an unknown name costs at most two
        // compares (and nothing is allocated: this runs for every parsed field).
        let first: KnownField, second: KnownField?
        switch name.count {
        case 2: (first, second) = (.te, nil)
        case 4: (first, second) = (.host, nil)
        case 6: (first, second) = (.expect, nil)
        case 7: (first, second) = (.upgrade, .trailer)
        case 10: (first, second) = (.connection, .keepAlive)
        case 14: (first, second) = (.contentLength, nil)
        case 15: (first, second) = (.xForwardedFor, nil)
        case 16: (first, second) = (.proxyConnection, .xForwardedHost)
        case 17: (first, second) = (.transferEncoding, .xForwardedProto)
        default: return nil
        }
        if name.equalsIgnoringASCIICase(first.name.utf8) {
            self = first
        } else if let second, name.equalsIgnoringASCIICase(second.name.utf8) {
            self = second
        } else {
            return nil
        }
    }
}
