import CShims

/// A TLS problem with what a user needs to fix it: the file, the peer, OpenSSL's reason.
public struct TLSError: Error, CustomStringConvertible, Sendable {
    public let description: String

    public init(_ what: String) {
        description = "\(what): \(TLSError.drainOpenSSLErrors())"
        timedOut = false
    }

    /// True for a timeout (not a TLS failure).
    public let timedOut: Bool

    /// Whether a certificate was the problem (none presented, not verified, refused by the
    /// peer): something an admin must fix, as against a peer that hung up mid-handshake.
    /// OpenSSL says so in its reason strings ("certificate verify failed", "peer did not
    /// return a certificate", "alert certificate required", "alert bad certificate").
    public var concernsCertificate: Bool { description.lowercased().contains("certificate") }

    init(plain: String) {
        description = plain
        timedOut = false
    }

    init(timeoutDuring what: String) {
        description = "\(what): timed out"
        timedOut = true
    }

    /// OpenSSL's error queue as one line (and emptied, so the next failure starts clean).
    static func drainOpenSSLErrors() -> String {
        var reasons: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            reasons.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return reasons.isEmpty ? "unknown OpenSSL error" : reasons.joined(separator: "; ")
    }
}
