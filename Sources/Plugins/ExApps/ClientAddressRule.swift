import Foundation
import HTTPProxy
import HarpKernel

/// Which `X-Forwarded-For` entry names the client when the peer is a trusted front proxy
/// (`[exapps] client_address`). The client address is what bans count and what the access
/// log shows.
///
/// - `first` (HaRP's rule, the default): the leftmost entry. Behind nginx's
///   `$proxy_add_x_forwarded_for` the client writes that entry itself, so it can pick any
///   address — evade a ban, or get someone else banned.
/// - `rightmost_untrusted`: the rightmost entry that is not a trusted proxy — the address the
///   last trusted proxy saw, which the client cannot choose (nginx's `real_ip_recursive`).
public enum ClientAddressRule: String, Codable, Sendable, CaseIterable {
    case first
    case rightmostUntrusted = "rightmost_untrusted"

    /// The client's address: the peer's, or — when the peer is a trusted proxy — the entry
    /// the rule picks from `X-Forwarded-For` (every such header, in order), else `X-Real-IP`;
    /// each only when it is an IP address.
    func client(_ client: ClientInfo, headers: HTTPHeaders, trusted: [IPRange]) -> String {
        guard client.isTrustedProxy else { return client.address }
        switch self {
        case .first:
            // The first field's first entry: no list built per request.
            if let first = headers["x-forwarded-for"]?.split(separator: ",").first?.trimmingCharacters(in: .whitespaces),
               IPRange.bytes(of: first) != nil { return first }
        case .rightmostUntrusted:
            let entries = headers.values("x-forwarded-for").flatMap { $0.split(separator: ",") }
                .map { $0.trimmingCharacters(in: .whitespaces) }
            var leftmost: String?
            for entry in entries.reversed() {
                guard let bytes = IPRange.bytes(of: entry) else {
                    leftmost = nil  // not an address: the chain cannot be followed past it
                    break
                }
                if !trusted.contains(where: { $0.contains(bytes) }) { return entry }
                leftmost = entry
            }
            // Every entry a trusted proxy: the leftmost is where the request began.
            if let leftmost { return leftmost }
        }
        if let real = headers["x-real-ip"]?.trimmingCharacters(in: .whitespaces), IPRange.bytes(of: real) != nil {
            return real
        }
        return client.address
    }
}
