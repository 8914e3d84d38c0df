import HarpKernel
import Logging

/// frpc's own TOML (the subset `harp tunnel` serves), read from the parsed tree by hand so
/// that every key frpc knows but harp does not is reported by name instead of ignored.
struct TunnelConfiguration: Sendable {
    struct Proxy: Sendable {
        enum Local: Sendable {
            case address(SocketAddress)
            case unixSocket(String)
        }
        var name: String
        var local: Local
        var remotePort: Int
        var useEncryption: Bool
        var useCompression: Bool
    }

    var serverAddress = "0.0.0.0"
    var serverPort = 7000
    var loginFailExit = true
    var user = ""
    var token = ""
    var metadatas: [String: String] = [:]
    var tls = true
    var certFile: String?
    var keyFile: String?
    var trustedCAFile: String?
    var serverName: String?
    /// frpc's default since 0.50: a plain ClientHello, no 0x17 marker first.
    var disableCustomTLSFirstByte = true
    var tcpMux = true
    var poolCount = 1
    var proxies: [Proxy] = []
    /// frpc's `log.level`: trace, debug, info, warn or error.
    var logLevel: Logger.Level = .info
    /// Keys present in the file that harp does not act on ("log.to", "webServer.port").
    var ignoredKeys: [String] = []

    /// Parses frpc TOML. Wrong types and missing proxy fields are errors naming the key.
    init(toml text: String, source: String) throws(ConfigError) {
        let root = try ConfigValue.parse(toml: text, source: source)
        var reader = TreeReader(root: root)
        serverAddress = try reader.string("serverAddr") ?? serverAddress
        serverPort = try reader.integer("serverPort") ?? serverPort
        loginFailExit = try reader.bool("loginFailExit") ?? loginFailExit
        user = try reader.string("user") ?? user
        if let method = try reader.string("auth.method"), method != "token" {
            throw .invalid(key: "auth.method", value: "\"\(method)\"", reason: "harp tunnel speaks token authentication only")
        }
        token = try reader.string("auth.token") ?? token
        metadatas = try reader.stringTable("metadatas")
        tls = try reader.bool("transport.tls.enable") ?? tls
        certFile = try reader.string("transport.tls.certFile")
        keyFile = try reader.string("transport.tls.keyFile")
        trustedCAFile = try reader.string("transport.tls.trustedCaFile")
        serverName = try reader.string("transport.tls.serverName")
        disableCustomTLSFirstByte = try reader.bool("transport.tls.disableCustomTLSFirstByte") ?? disableCustomTLSFirstByte
        tcpMux = try reader.bool("transport.tcpMux") ?? tcpMux
        poolCount = try reader.integer("transport.poolCount") ?? poolCount
        if let level = try reader.string("log.level") {
            let levels: [String: Logger.Level] = ["trace": .trace, "debug": .debug, "info": .info, "warn": .warning, "error": .error]
            guard let known = levels[level.lowercased()] else {
                throw .invalid(key: "log.level", value: "\"\(level)\"", reason: "frpc's levels are trace, debug, info, warn and error")
            }
            logLevel = known
        }
        for (index, proxy) in reader.tables("proxies").enumerated() {
            var entry = TreeReader(root: proxy, prefix: "proxies[\(index)].")
            guard let name = try entry.string("name") else { throw .missingKey(key: "proxies[\(index)].name", expected: "a proxy name") }
            let type = try entry.string("type") ?? "tcp"
            guard type == "tcp" else {
                throw .invalid(key: "proxies[\(index)].type", value: "\"\(type)\"", reason: "harp tunnel serves tcp proxies only")
            }
            let local: Proxy.Local
            if let plugin = try entry.string("plugin.type") {
                guard plugin == "unix_domain_socket", let path = try entry.string("plugin.unixPath") else {
                    throw .invalid(key: "proxies[\(index)].plugin.type", value: "\"\(plugin)\"",
                                   reason: "harp tunnel knows the unix_domain_socket plugin (with unixPath) only")
                }
                local = .unixSocket(path)
            } else {
                let ip = try entry.string("localIP") ?? "127.0.0.1"
                guard let port = try entry.integer("localPort") else { throw .missingKey(key: "proxies[\(index)].localPort", expected: "the local port to publish (or plugin.type = \"unix_domain_socket\")") }
                do {
                    local = .address(try SocketAddress(parsing: ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"))
                } catch {
                    throw .invalid(key: "proxies[\(index)].localIP", value: "\"\(ip)\"", reason: error.reason)
                }
            }
            proxies.append(Proxy(name: name, local: local, remotePort: try entry.integer("remotePort") ?? 0,
                                 useEncryption: try entry.bool("transport.useEncryption") ?? false,
                                 useCompression: try entry.bool("transport.useCompression") ?? false))
            ignoredKeys += entry.unread()
        }
        ignoredKeys += reader.unread(except: ["proxies"])
    }

    /// A dotted-key view of a table that remembers which leaves were read.
    struct TreeReader {
        let root: ConfigValue
        let prefix: String
        private(set) var read: Set<String> = []

        init(root: ConfigValue, prefix: String = "") {
            self.root = root
            self.prefix = prefix
        }

        private mutating func value(_ path: String) -> ConfigValue? {
            read.insert(path)
            var node: ConfigValue? = root
            for part in path.split(separator: ".") { node = node?[String(part)] }
            return node
        }

        mutating func string(_ path: String) throws(ConfigError) -> String? {
            guard let value = value(path) else { return nil }
            guard case .string(let text) = value else { throw .invalid(key: prefix + path, value: value.inlineTOML, reason: "expected a string") }
            return text
        }

        mutating func integer(_ path: String) throws(ConfigError) -> Int? {
            guard let value = value(path) else { return nil }
            guard case .integer(let number) = value else { throw .invalid(key: prefix + path, value: value.inlineTOML, reason: "expected an integer") }
            return number
        }

        mutating func bool(_ path: String) throws(ConfigError) -> Bool? {
            guard let value = value(path) else { return nil }
            guard case .bool(let flag) = value else { throw .invalid(key: prefix + path, value: value.inlineTOML, reason: "expected true or false") }
            return flag
        }

        mutating func stringTable(_ path: String) throws(ConfigError) -> [String: String] {
            guard let value = value(path) else { return [:] }
            guard case .table(let entries) = value else { throw .invalid(key: prefix + path, value: value.inlineTOML, reason: "expected a table") }
            var out: [String: String] = [:]
            for (key, entry) in entries {
                guard case .string(let text) = entry else { throw .invalid(key: "\(prefix)\(path).\(key)", value: entry.inlineTOML, reason: "expected a string") }
                out[key] = text
            }
            return out
        }

        mutating func tables(_ path: String) -> [ConfigValue] {
            guard case .array(let items)? = value(path) else { return [] }
            return items
        }

        /// Leaf keys present but never read, with their full dotted names.
        func unread(except skipped: Set<String> = []) -> [String] {
            var out: [String] = []
            func walk(_ node: ConfigValue, _ path: String) {
                if !path.isEmpty && (read.contains(path) || skipped.contains(path)) { return }
                if case .table(let entries) = node {
                    for (key, child) in entries { walk(child, path.isEmpty ? key : "\(path).\(key)") }
                } else if !path.isEmpty {
                    out.append(prefix + path)
                }
            }
            walk(root, "")
            return out
        }
    }
}
