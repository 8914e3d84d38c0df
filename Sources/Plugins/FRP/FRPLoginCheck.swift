import HarpKernel

/// What a client asked for when it logged in, for login checks.
public struct FRPLoginAttempt: Sendable {
    /// The client's address as harp sees it (the frpc container, for ExApps).
    public let clientAddress: SocketAddress?
    public let user: String
    public let hostname: String
    /// frpc's `metadatas` (HaRP puts the shared key in `token`).
    public let metas: [String: String]
}

/// Decides whether a client may log in, after the frp token check (HaRP's frps Login plugin
/// hook, in-process). The ExApps plugin adds one for its bans; the `[frp] shared_key` check is
/// another. nil admits; a refusal ends the login — its description goes back to frpc in
/// `LoginResp`.
public protocol FRPLoginCheck: Sendable {
    func check(_ attempt: FRPLoginAttempt) async -> FRPLoginRefusal?
}

/// Why a login check refused a client.
public enum FRPLoginRefusal: Sendable, Equatable, CustomStringConvertible {
    /// The client's address is banned (too many failed attempts).
    case banned
    /// `metas.token` is not the shared key.
    case invalidSharedKey

    /// HaRP's wording, which frpc prints.
    public var description: String {
        switch self {
        case .banned: "banned"
        case .invalidSharedKey: "invalid shared key"
        }
    }
}

/// `metas.token` must equal `[frp] shared_key` (constant-time comparison).
struct SharedKeyCheck: FRPLoginCheck {
    let sharedKey: String

    func check(_ attempt: FRPLoginAttempt) async -> FRPLoginRefusal? {
        SecretComparison.equal(attempt.metas["token"] ?? "", sharedKey) ? nil : .invalidSharedKey
    }
}

/// One open tcp proxy: an frpc's published port.
public struct FRPTunnel: Sendable, Equatable {
    public let name: String
    public let port: Int
    /// The frpc's address as harp saw it.
    public let client: String
    public let runID: String
}
