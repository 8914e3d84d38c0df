import CShims

/// A TLS protocol version harp will speak. Nothing below 1.2 exists here: RFC 8996 retired
/// 1.0 and 1.1, so a config naming them is an error rather than a silent downgrade.
public enum TLSVersion: String, Codable, Sendable, CaseIterable, Comparable {
    case tls12 = "TLSv1.2"
    case tls13 = "TLSv1.3"

    /// Both, the default: a listener offers what its clients can do.
    public static let all: ClosedRange<TLSVersion> = .tls12 ... .tls13

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let version = TLSVersion(rawValue: text) else {
            let retired = ["SSLv2", "SSLv3", "TLSv1", "TLSv1.0", "TLSv1.1"].contains(text)
            throw ConfigValueProblem((retired ? "versions below TLS 1.2 are refused (RFC 8996); " : "")
                + "expected one of \(Self.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self = version
    }

    public static func < (a: TLSVersion, b: TLSVersion) -> Bool { a.wire < b.wire }

    /// OpenSSL's protocol number.
    var wire: Int32 {
        switch self {
        case .tls12: TLS1_2_VERSION
        case .tls13: TLS1_3_VERSION
        }
    }

    /// The smallest range holding all of `versions`; nil when empty or when it would have a
    /// gap (OpenSSL only knows a lowest and a highest version).
    public static func range(of versions: [TLSVersion]) -> ClosedRange<TLSVersion>? {
        guard let low = versions.min(), let high = versions.max() else { return nil }
        return low ... high
    }
}
