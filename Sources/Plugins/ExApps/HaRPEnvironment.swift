import Foundation
import HarpKernel

/// HaRP's environment variables (its Dockerfile and start script), so that an admin swaps
/// HaRP's container for harp and keeps the environment. They override the config file; with
/// no file and `HP_SHARED_KEY`/`HP_SHARED_KEY_FILE` or `NC_INSTANCE_URL` set, `harp serve`
/// runs HaRP's whole set-up (`defaultDocument`). A wrong value stops startup naming the
/// variable — where HaRP's script would warn and go on, or its agent crash later.
enum HaRPEnvironment {
    /// Any of these asks for HaRP's set-up.
    static let triggers = ["HP_SHARED_KEY", "HP_SHARED_KEY_FILE", "NC_INSTANCE_URL"]

    static func asksForSetup(_ environment: [String: String]) -> Bool {
        triggers.contains { environment[$0] != nil }
    }

    /// Where HaRP keeps certificates: `frp/` (generated) and `cert.pem` (the HTTPS listener's
    /// certificate and key, when the admin provides one). `HARP_CERTS_DIR` moves it.
    static func certsDirectory(_ environment: [String: String]) -> String {
        environment["HARP_CERTS_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/certs"
    }

    /// HaRP's set-up: the ExApps listener, the FRP server with mutual TLS and certificates
    /// generated into `<certs>/frp`, bans on. The variables then fill in the rest.
    /// Without a config file, any other `HP_*`/`NC_*` variable means the admin meant HaRP's
    /// set-up too: without the key and the URL that is an error naming what is missing, not
    /// harp's demo configuration on 8080.
    static func defaultDocument(_ environment: [String: String]) throws(ConfigError) -> String? {
        guard asksForSetup(environment) else {
            if let variable = environment.keys.sorted().first(where: { $0.hasPrefix("HP_") || $0.hasPrefix("NC_") }) {
                throw .environment(variable: variable, reason: """
                    \(variable) is set, so HaRP's set-up is meant, but it also needs HP_SHARED_KEY (or HP_SHARED_KEY_FILE) \
                    and NC_INSTANCE_URL; set them, or pass --config FILE
                    """)
            }
            return nil
        }
        return """
            [harp]
            plugins = ["http", "websocket", "frp", "exapps"\(environment["HP_METRICS_ADDRESS"] == nil ? "" : ", \"admin\"")]
            log_level = "warning"

            [http]
            listen = []

            [websocket]

            [frp]
            listen = "0.0.0.0:8782"
            tls = "mutual"
            cert_dir = "\(certsDirectory(environment))/frp"

            [exapps]
            listen = ["0.0.0.0:8780"]

            """
    }

    static func overrides(_ environment: [String: String]) throws(ConfigError) -> [ConfigOverride] {
        var result: [ConfigOverride] = []
        func value(_ name: String) -> String? {
            guard let raw = environment[name] else { return nil }
            return stripQuotes(raw)
        }
        if asksForSetup(environment) {
            let key = try sharedKey(environment)
            let keyVariable = environment["HP_SHARED_KEY_FILE"] != nil ? "HP_SHARED_KEY_FILE" : "HP_SHARED_KEY"
            result.append(ConfigOverride(["exapps", "shared_key"], .string(key), from: keyVariable))
            result.append(ConfigOverride(["frp", "shared_key"], .string(key), from: keyVariable))
            let url = NextcloudURL.normalized(value("NC_INSTANCE_URL") ?? "")
            guard !url.isEmpty else { throw .environment(variable: "NC_INSTANCE_URL", reason: "NC_INSTANCE_URL is not set (Nextcloud's base URL)") }
            do { _ = try NextcloudURL(url) } catch { throw .environment(variable: "NC_INSTANCE_URL", reason: "\"\(url)\": \(error.explanation)") }
            result.append(ConfigOverride(["exapps", "nextcloud_url"], .string(url), from: "NC_INSTANCE_URL"))
            // HTTPS only when HaRP's certificate file is there (cert and key in one PEM).
            let certificate = certsDirectory(environment) + "/cert.pem"
            if FileManager.default.fileExists(atPath: certificate) && !FileManager.default.isReadableFile(atPath: certificate) {
                // HaRP would have served no HTTPS without a word; an admin who put it there wants it.
                throw .environment(variable: environment["HARP_CERTS_DIR"] == nil ? "HP_EXAPPS_HTTPS_ADDRESS" : "HARP_CERTS_DIR",
                                   reason: "\(certificate) exists but cannot be read (the HTTPS listener's certificate and key)")
            }
            if FileManager.default.isReadableFile(atPath: certificate) {
                let address = try address(value("HP_EXAPPS_HTTPS_ADDRESS") ?? "0.0.0.0:8781", variable: "HP_EXAPPS_HTTPS_ADDRESS")
                result.append(ConfigOverride(["exapps", "listen_tls"], .array([.table([
                    ("listen", .string(address)), ("cert", .string(certificate)), ("key", .string(certificate)),
                ])]), from: "HP_EXAPPS_HTTPS_ADDRESS"))
            }
        }
        // harp's additions for an https Nextcloud with a private CA (HaRP trusted the system store only).
        if let path = value("HP_NEXTCLOUD_CA") {
            guard FileManager.default.isReadableFile(atPath: path) else {
                throw .environment(variable: "HP_NEXTCLOUD_CA", reason: "cannot read \(path) (a PEM file of the CA that signed Nextcloud's certificate)")
            }
            result.append(ConfigOverride(["exapps", "nextcloud_ca"], .string(path), from: "HP_NEXTCLOUD_CA"))
        }
        if let text = value("HP_NEXTCLOUD_VERIFY") {
            guard text == "true" || text == "false" else {
                throw .environment(variable: "HP_NEXTCLOUD_VERIFY", reason: "expected true or false, got '\(text)'")
            }
            result.append(ConfigOverride(["exapps", "nextcloud_verify"], .bool(text == "true"), from: "HP_NEXTCLOUD_VERIFY"))
        }
        if let path = value("HARP_EXAPPS_SOCKET"), !path.isEmpty {
            result.append(ConfigOverride(["exapps", "control_socket"], .string(path), from: "HARP_EXAPPS_SOCKET"))
        }
        // The generated FRP certificates follow HARP_CERTS_DIR with a config file too.
        if let directory = environment["HARP_CERTS_DIR"], !directory.isEmpty {
            result.append(ConfigOverride(["frp", "cert_dir"], .string(directory + "/frp"), from: "HARP_CERTS_DIR"))
        }
        if let text = value("HP_EXAPPS_ADDRESS") {
            result.append(ConfigOverride(["exapps", "listen"], .array([.string(try address(text, variable: "HP_EXAPPS_ADDRESS"))]), from: "HP_EXAPPS_ADDRESS"))
        }
        // harp's addition: Prometheus /metrics and /healthz (the admin plugin) on this address.
        if let text = value("HP_METRICS_ADDRESS") {
            result.append(ConfigOverride(["admin", "listen"], .string(try address(text, variable: "HP_METRICS_ADDRESS")), from: "HP_METRICS_ADDRESS"))
        }
        if let text = value("HP_FRP_ADDRESS") {
            result.append(ConfigOverride(["frp", "listen"], .string(try address(text, variable: "HP_FRP_ADDRESS")), from: "HP_FRP_ADDRESS"))
        }
        if environment["HP_FRP_DISABLE_TLS"] == "true" {  // HaRP: only the exact word turns TLS off
            result.append(ConfigOverride(["frp", "tls"], .string("off"), from: "HP_FRP_DISABLE_TLS"))
        }
        if let text = value("HP_FRP_CERT_VALIDITY_DAYS") {
            guard let days = Int(text), days >= 1 else {
                throw .environment(variable: "HP_FRP_CERT_VALIDITY_DAYS", reason: "must be a positive integer number of days, got '\(text)'")
            }
            result.append(ConfigOverride(["frp", "cert_days"], .integer(days), from: "HP_FRP_CERT_VALIDITY_DAYS"))
        }
        if let text = value("HP_SESSION_LIFETIME") {
            guard let seconds = Double(text), seconds >= 0, seconds <= 10 else {
                throw .environment(variable: "HP_SESSION_LIFETIME", reason: "expected seconds from 0 to 10, got '\(text)'")
            }
            result.append(ConfigOverride(["exapps", "session_lifetime"], .string("\(Int((seconds * 1000).rounded()))ms"), from: "HP_SESSION_LIFETIME"))
        }
        if let text = value("HP_BLACKLIST_COUNT") {
            guard let count = Int(text), count >= 0 else {
                throw .environment(variable: "HP_BLACKLIST_COUNT", reason: "expected a number of failures (0 turns bans off), got '\(text)'")
            }
            result.append(ConfigOverride(["exapps", "ban_count"], .integer(count), from: "HP_BLACKLIST_COUNT"))
        }
        if let text = value("HP_BLACKLIST_WINDOW") {
            guard let seconds = Int(text), seconds >= 1 else {
                throw .environment(variable: "HP_BLACKLIST_WINDOW", reason: "expected a positive number of seconds, got '\(text)'")
            }
            result.append(ConfigOverride(["exapps", "ban_window"], .string("\(seconds)s"), from: "HP_BLACKLIST_WINDOW"))
        }
        if let text = value("HP_TRUSTED_PROXY_IPS") {
            var ranges: [ConfigValue] = []
            for item in text.split(separator: ",") {
                let entry = stripQuotes(item.trimmingCharacters(in: .whitespaces)).trimmingCharacters(in: .whitespaces)
                if entry.isEmpty { continue }
                do { _ = try IPRange(parsing: entry) } catch {
                    throw .environment(variable: "HP_TRUSTED_PROXY_IPS", reason: "'\(entry)': \(error.explanation)")
                }
                ranges.append(.string(entry))
            }
            result.append(ConfigOverride(["exapps", "trusted_proxies"], .array(ranges), from: "HP_TRUSTED_PROXY_IPS"))
        }
        for (name, key) in [("HP_TIMEOUT_CONNECT", "connect_timeout"), ("HP_TIMEOUT_CLIENT", "client_timeout"),
                            ("HP_TIMEOUT_SERVER", "server_timeout"), ("HP_TIMEOUT_TUNNEL", "tunnel_timeout")] {
            guard let text = value(name) else { continue }
            result.append(ConfigOverride(["http", key], .string(try haproxyTime(text, variable: name)), from: name))
        }
        if let text = value("HP_LOG_LEVEL") {
            let levels = ["debug": "debug", "info": "info", "warning": "warning", "error": "error"]
            guard let level = levels[text.lowercased()] else {
                throw .environment(variable: "HP_LOG_LEVEL", reason: "expected debug, info, warning or error, got '\(text)'")
            }
            result.append(ConfigOverride(["harp", "log_level"], .string(level), from: "HP_LOG_LEVEL"))
        }
        // HaRP's self-healing watchdog: on unless HP_WATCHDOG_ENABLED is set to anything but
        // the exact word "true" (its start.sh compares so); harp watches its loops instead of
        // probing an agent, with the same interval × fails.
        if let text = environment["HP_WATCHDOG_ENABLED"] {
            result.append(ConfigOverride(["harp", "watchdog"], .bool(text == "true"), from: "HP_WATCHDOG_ENABLED"))
        }
        for (name, key) in [("HP_WATCHDOG_INTERVAL", "watchdog_interval"), ("HP_WATCHDOG_FAILS", "watchdog_fails")] {
            guard let text = value(name) else { continue }
            guard let number = Int(text), number >= 1 else {
                throw .environment(variable: name, reason: "expected a positive whole number, got '\(text)'")
            }
            result.append(ConfigOverride(["harp", key], key == "watchdog_fails" ? .integer(number) : .string("\(number)s"), from: name))
        }
        return result
    }

    /// HaRP's key rules: exactly one of the two variables; printable ASCII; one pair of
    /// surrounding quotes removed; then no `"` or `\`.
    static func sharedKey(_ environment: [String: String]) throws(ConfigError) -> String {
        let raw: String
        let variable: String
        switch (environment["HP_SHARED_KEY"], environment["HP_SHARED_KEY_FILE"]) {
        case (.some, .some):
            throw .environment(variable: "HP_SHARED_KEY_FILE", reason: "only one of HP_SHARED_KEY or HP_SHARED_KEY_FILE should be specified")
        case (nil, nil):
            throw .environment(variable: "HP_SHARED_KEY", reason: "either HP_SHARED_KEY or HP_SHARED_KEY_FILE must be set")
        case (.some(let key), nil):
            raw = key
            variable = "HP_SHARED_KEY"
        case (nil, .some(let path)):
            guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
                throw .environment(variable: "HP_SHARED_KEY_FILE", reason: "cannot read \(path)")
            }
            raw = text
            variable = "HP_SHARED_KEY_FILE"
        }
        var key = Substring(raw)
        while key.last == "\n" || key.last == "\r" { key = key.dropLast() }
        guard key.utf8.allSatisfy({ (0x20...0x7e).contains($0) }) else {
            throw .environment(variable: variable, reason: "the key may contain only printable ASCII characters")
        }
        let cleaned = SharedKey.cleaned(String(key))
        if let problem = SharedKey.problem(cleaned) { throw .environment(variable: variable, reason: problem) }
        return cleaned
    }

    private static func stripQuotes<S: StringProtocol>(_ text: S) -> String {
        var value = Substring(text)
        for quote in ["\"", "'"] as [Character] where value.count >= 2 && value.first == quote && value.last == quote {
            value = value.dropFirst().dropLast()
        }
        return String(value)
    }

    private static func address(_ raw: String, variable: String) throws(ConfigError) -> String {
        // HAProxy's `bind :8780` means every IPv4 address.
        let text = raw.hasPrefix(":") ? "0.0.0.0" + raw : raw
        do {
            _ = try SocketAddress(parsing: text)
        } catch {
            throw .environment(variable: variable, reason: "'\(text)': \(error.reason); expected host:port like 0.0.0.0:8780")
        }
        return text
    }

    /// HAProxy's time format: an integer with an optional unit (us, ms, s, m, h, d; none is
    /// ms). 0 means no limit: harp's "no limit" is 24 days, as HaRP turns a 0 tunnel timeout.
    static func haproxyTime(_ text: String, variable: String) throws(ConfigError) -> String {
        let digits = text.prefix { $0.isASCII && $0.isNumber }
        let unit = text.dropFirst(digits.count)
        let scale: [Substring: Double] = ["": 1, "us": 0.001, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000]
        guard let number = Double(digits), let factor = scale[unit] else {
            throw .environment(variable: variable, reason: "'\(text)': expected a time like 30s, 500ms, 5m or 1h (a bare number is milliseconds)")
        }
        // Over a year is a typo, not a timeout (and would overflow).
        guard number * factor <= 366 * 86_400_000 else {
            throw .environment(variable: variable, reason: "'\(text)' is more than a year")
        }
        let milliseconds = Int((number * factor).rounded(.up))
        return milliseconds == 0 ? "576h" : "\(milliseconds)ms"
    }
}
