import Foundation
import HarpKernel

/// The `[exapps]` section: Nextcloud's AppAPI gateway (HaRP's settings; its `HP_*`
/// environment variables override these, see `HaRPEnvironment`).
public struct ExAppsConfiguration: Codable, Sendable {
    /// The ExApps listeners (HaRP: `HP_EXAPPS_ADDRESS`, and `HP_EXAPPS_HTTPS_ADDRESS` when
    /// a certificate is configured).
    public var listen: [SocketAddress]
    public var listenTLS: [TLSListenerConfiguration]
    /// Nextcloud's base URL, without `/index.php` (a path for a sub-directory install is kept).
    public var nextcloudURL: String
    /// https Nextcloud: a PEM CA file instead of the system store; verification can be turned
    /// off only explicitly (and is then logged).
    public var nextcloudCA: String?
    public var nextcloudVerify: Bool
    /// The key AppAPI and the ExApps' frpc present (`harp-shared-key`, frp `metas.token`).
    public var sharedKey: String
    /// A file holding the key instead (HaRP's `HP_SHARED_KEY_FILE`); exactly one of the two.
    public var sharedKeyFile: String?
    /// How long a user's session answer from Nextcloud is reused (0–10 s).
    public var sessionLifetime: ConfigDuration
    /// An IP with this many failures inside `ban_window` is banned (its requests dropped, its
    /// frp logins refused); 0 turns bans off.
    public var banCount: Int
    public var banWindow: ConfigDuration
    /// Front proxies whose `X-Forwarded-For`, else `X-Real-IP`, names the client, and whose
    /// `X-Forwarded-*` headers the ExApps receive (extended) instead of harp's own.
    public var trustedProxies: [IPRange]
    /// Which `X-Forwarded-For` entry is the client (`ClientAddressRule`; HaRP's: the first).
    public var clientAddress: ClientAddressRule
    /// Limit for one Nextcloud call (HaRP: 25 s).
    public var nextcloudTimeout: ConfigDuration
    /// How long "Nextcloud does not know this app" is remembered (HaRP: 15 s).
    public var unknownAppTTL: ConfigDuration
    /// The command socket of `harp exapps bans` (mode 0600); nil: `defaultControlSocket`.
    public var controlSocket: String?

    public init() {
        listen = [.ipv4(host: 0, port: 8780)]
        listenTLS = []
        nextcloudURL = ""
        nextcloudCA = nil
        nextcloudVerify = true
        sharedKey = ""
        sharedKeyFile = nil
        sessionLifetime = .seconds(3)
        banCount = 10
        banWindow = .seconds(300)
        trustedProxies = []
        clientAddress = .first
        nextcloudTimeout = .seconds(25)
        unknownAppTTL = .seconds(15)
        controlSocket = nil
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case listen, listenTLS = "listen_tls", nextcloudURL = "nextcloud_url", nextcloudCA = "nextcloud_ca"
        case nextcloudVerify = "nextcloud_verify", sharedKey = "shared_key", sharedKeyFile = "shared_key_file"
        case sessionLifetime = "session_lifetime", banCount = "ban_count", banWindow = "ban_window"
        case trustedProxies = "trusted_proxies", clientAddress = "client_address", nextcloudTimeout = "nextcloud_timeout", unknownAppTTL = "unknown_app_ttl"
        case controlSocket = "control_socket"
    }

    public init(from decoder: any Decoder) throws {
        var d = ExAppsConfiguration()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        d.listenTLS = try c.decodeIfPresent([TLSListenerConfiguration].self, forKey: .listenTLS) ?? []
        d.listen = try c.decodeIfPresent([SocketAddress].self, forKey: .listen) ?? (d.listenTLS.isEmpty ? d.listen : [])
        d.nextcloudURL = try c.decodeIfPresent(String.self, forKey: .nextcloudURL) ?? ""
        d.nextcloudCA = try c.decodeIfPresent(String.self, forKey: .nextcloudCA)
        d.nextcloudVerify = try c.decodeIfPresent(Bool.self, forKey: .nextcloudVerify) ?? true
        d.sharedKey = try c.decodeIfPresent(String.self, forKey: .sharedKey) ?? ""
        d.sharedKeyFile = try c.decodeIfPresent(String.self, forKey: .sharedKeyFile)
        d.sessionLifetime = try c.decodeIfPresent(ConfigDuration.self, forKey: .sessionLifetime) ?? d.sessionLifetime
        d.banCount = try c.decodeIfPresent(Int.self, forKey: .banCount) ?? d.banCount
        d.banWindow = try c.decodeIfPresent(ConfigDuration.self, forKey: .banWindow) ?? d.banWindow
        d.trustedProxies = try c.decodeIfPresent([IPRange].self, forKey: .trustedProxies) ?? []
        d.clientAddress = try c.decodeIfPresent(ClientAddressRule.self, forKey: .clientAddress) ?? d.clientAddress
        d.nextcloudTimeout = try c.decodeIfPresent(ConfigDuration.self, forKey: .nextcloudTimeout) ?? d.nextcloudTimeout
        d.unknownAppTTL = try c.decodeIfPresent(ConfigDuration.self, forKey: .unknownAppTTL) ?? d.unknownAppTTL
        d.controlSocket = try c.decodeIfPresent(String.self, forKey: .controlSocket)
        d.nextcloudURL = NextcloudURL.normalized(d.nextcloudURL)
        self = d
        try validate()
    }

    func validate() throws(ConfigError) {
        if nextcloudURL.isEmpty {
            throw .missingKey(key: "exapps.nextcloud_url", expected: "Nextcloud's base URL, like \"https://cloud.example.com\"")
        }
        do {
            _ = try NextcloudURL(nextcloudURL)
        } catch {
            throw .invalid(key: "exapps.nextcloud_url", value: "\"\(nextcloudURL)\"", reason: error.explanation)
        }
        switch (sharedKey.isEmpty, sharedKeyFile) {
        case (true, nil):
            throw .missingKey(key: "exapps.shared_key", expected: "the key AppAPI was registered with (or shared_key_file)")
        case (false, .some):
            throw .invalid(key: "exapps.shared_key_file", value: "\"\(sharedKeyFile!)\"", reason: "set shared_key or shared_key_file, not both")
        case (false, nil):
            if let problem = SharedKey.problem(sharedKey) {
                throw .invalid(key: "exapps.shared_key", value: "(hidden)", reason: problem)
            }
        case (true, .some):
            break  // read and checked when the plugin is built (`resolvedSharedKey`)
        }
        let lifetime = sessionLifetime.duration
        guard lifetime >= .zero && lifetime <= .seconds(10) else {
            throw .invalid(key: "exapps.session_lifetime", value: "\"\(sessionLifetime)\"", reason: "expected 0s to 10s")
        }
        guard banCount >= 0 else {
            throw .invalid(key: "exapps.ban_count", value: "\(banCount)", reason: "expected 0 (no bans) or more")
        }
        guard banWindow.duration > .zero || banCount == 0 else {
            throw .invalid(key: "exapps.ban_window", value: "\"\(banWindow)\"", reason: "expected a positive duration")
        }
        if listen.isEmpty && listenTLS.isEmpty {
            throw .invalid(key: "exapps.listen", value: "[]", reason: "expected at least one address (or an [[exapps.listen_tls]])")
        }
    }

    /// Where the command socket is: `control_socket` (`HARP_EXAPPS_SOCKET`), else
    /// `harp-exapps-<port>.sock` (the first listener's port: one socket per gateway on a
    /// machine) in `/run` for root (a container), else in `$XDG_RUNTIME_DIR` or `/tmp`. The CLI
    /// finds it from the same configuration; root's CLI ignores its login session's
    /// `$XDG_RUNTIME_DIR`, as root's harp does.
    func resolvedControlSocket(environment: [String: String]) -> String {
        if let controlSocket { return controlSocket }
        let port = (listen + listenTLS.map(\.listen)).first?.port ?? 8780
        let directory = geteuid() == 0 ? "/run" : environment["XDG_RUNTIME_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        return "\(directory)/harp-exapps-\(port).sock"
    }

    /// The shared key, read from `shared_key_file` when that is set.
    func resolvedSharedKey() throws(ConfigError) -> String {
        guard let path = sharedKeyFile else { return sharedKey }
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw .unreadable(path: path, reason: "the shared key file cannot be read")
        }
        let key = SharedKey.cleaned(text)
        if let problem = SharedKey.problem(key) {
            throw .invalid(key: "exapps.shared_key_file", value: "\"\(path)\"", reason: problem)
        }
        return key
    }
}

/// HaRP's rules for the shared key: printable ASCII, one pair of surrounding quotes removed,
/// and no `"` or `\` left (it is written into configuration files).
enum SharedKey {
    /// Trailing newlines dropped (a file written with `echo`); then a leading and a trailing
    /// quote each removed (HaRP's `sed` does the two independently).
    static func cleaned(_ raw: String) -> String {
        var key = Substring(raw)
        while key.last == "\n" || key.last == "\r" { key = key.dropLast() }
        for quote in ["\"", "'"] as [Character] {
            if key.first == quote { key = key.dropFirst() }
            if key.last == quote { key = key.dropLast() }
        }
        return String(key)
    }

    /// Why `key` cannot be used, or nil.
    static func problem(_ key: String) -> String? {
        if key.isEmpty { return "the key is empty" }
        if !key.utf8.allSatisfy({ (0x20...0x7e).contains($0) }) { return "only printable ASCII characters are allowed" }
        if key.contains("\"") || key.contains("\\") { return "the characters \" and \\ are not allowed" }
        return nil
    }
}
