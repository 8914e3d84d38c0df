import Foundation
import HTTPProxy
import HarpKernel

/// Nextcloud's base URL split for `HTTPClient`: where to connect, the `Host` to send (as the
/// admin wrote it: Nextcloud checks it against `trusted_domains`) and the path of a
/// sub-directory install. The host name is not looked up here: Nextcloud may not resolve yet
/// when harp starts (a compose file starting both), so `NextcloudClient` resolves it when it
/// calls, off the loop, and again after a while.
struct NextcloudURL: Sendable {
    let isTLS: Bool
    /// The host as written (brackets removed from an IPv6 literal).
    let hostName: String
    let port: UInt16
    /// The Host header: the authority as written.
    let host: String
    /// "" or "/nextcloud": put before `/index.php/...`.
    let pathPrefix: String

    /// HaRP's normalisation: one trailing `/`, then a trailing `/index.php`, removed.
    static func normalized(_ text: String) -> String {
        var url = text.trimmingCharacters(in: .whitespaces)
        for quote in ["\"", "'"] where url.hasPrefix(quote) && url.hasSuffix(quote) && url.count >= 2 {
            url = String(url.dropFirst().dropLast())
        }
        if url.hasSuffix("/") { url.removeLast() }
        if url.hasSuffix("/index.php") { url.removeLast("/index.php".count) }
        return url
    }

    init(_ text: String) throws(ConfigValueProblem) {
        guard text.hasPrefix("http://") || text.hasPrefix("https://") else {
            throw ConfigValueProblem("expected an http:// or https:// URL, like \"https://cloud.example.com\"")
        }
        isTLS = text.hasPrefix("https://")
        let rest = text.dropFirst(isTLS ? 8 : 7)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        host = String(rest[..<slash])
        pathPrefix = String(rest[slash...])
        var name = Substring(host)
        var portText: Substring?
        if name.hasPrefix("[") {
            guard let close = name.firstIndex(of: "]") else { throw ConfigValueProblem("an IPv6 address needs its closing ]") }
            let after = name[name.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty { throw ConfigValueProblem("unexpected text after ]") }
            name = name[name.index(after: name.startIndex)..<close]
        } else if let colon = name.lastIndex(of: ":") {
            portText = name[name.index(after: colon)...]
            name = name[..<colon]
        }
        guard !name.isEmpty, !name.contains(where: { $0 == " " || $0 == "@" }) else { throw ConfigValueProblem("the URL has no valid host") }
        hostName = String(name)
        if let portText {
            guard let value = UInt16(portText), value > 0 else { throw ConfigValueProblem("the port must be 1-65535") }
            port = value
        } else {
            port = isTLS ? 443 : 80
        }
    }

    /// `/index.php/apps/app_api/harp/<endpoint>?appId=<app id>` under the base path.
    func target(_ endpoint: String, appID: String) -> String {
        pathPrefix + "/index.php/apps/app_api/harp/" + endpoint + "?appId=" + PercentEncoding.encode(appID)
    }
}

/// Percent-encoding and -decoding of URL components (RFC 3986 unreserved characters pass).
enum PercentEncoding {
    static func encode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }

    /// A hex digit's value (signs, which `UInt8(_:radix:)` would take, are not digits).
    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// `%XX` sequences decoded; a malformed one is kept as written.
    static func decode<S: StringProtocol>(_ text: S) -> String {
        let bytes = Array(text.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "%"), index + 2 < bytes.count,
               let high = hexValue(bytes[index + 1]), let low = hexValue(bytes[index + 2]) {
                out.append(high << 4 | low)
                index += 3
            } else {
                out.append(bytes[index])
                index += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
