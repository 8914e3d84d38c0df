import Glibc

/// A whole configuration document: the `[harp]` settings plus one section per plugin.
public struct ConfigFile: Sendable {
    public let settings: HarpSettings
    /// Plugin sections by plugin name (not section name), as written (not yet decoded).
    public let sections: [String: ConfigValue]
    /// The order sections appear in, for output.
    public let sectionOrder: [String]
    /// Keys that environment variables set.
    public let origins: ConfigOrigins

    /// Parses and checks the document's shape: every top-level key is `harp` or the name of
    /// a registered plugin. Each plugin's environment variables (`Plugin.environmentOverrides`)
    /// are applied over the text before anything is decoded.
    public init(text: String, source: String, registry: PluginRegistry, environment: [String: String] = [:]) throws(ConfigError) {
        var document = try ConfigValue.parse(toml: text, source: source)
        guard case .table = document else { throw .syntax(source: source, line: 0, column: 0, message: "not a table") }
        var origins = ConfigOrigins()
        for type in registry.types {
            for override in try type.environmentOverrides(environment) {
                document = document.setting(override.path[...], to: override.value)
                origins.record(override)
            }
        }
        guard case .table(let entries) = document else { throw .syntax(source: source, line: 0, column: 0, message: "not a table") }
        var sections: [String: ConfigValue] = [:]
        var order: [String] = []
        var settings = HarpSettings()
        let allowed = ["harp"] + registry.types.map { $0.section }
        for (key, value) in entries {
            if key == "harp" {
                settings = try ConfigDecoder.decode(HarpSettings.self, from: value, path: "harp")
            } else if let type = registry.type(section: key) {
                sections[type.name] = value
                order.append(type.name)
            } else {
                throw .unknownKey(key: key, allowed: allowed)
            }
        }
        self.settings = settings
        self.sections = sections
        self.sectionOrder = order
        self.origins = origins
    }

    /// Reads `path`; a missing or unreadable file is an error naming it.
    public static func load(path: String, registry: PluginRegistry, environment: [String: String] = [:]) throws(ConfigError) -> ConfigFile {
        guard let file = fopen(path, "r") else {
            throw .unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count <= 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw .unreadable(path: path, reason: "not UTF-8 text")
        }
        return try ConfigFile(text: text, source: path, registry: registry, environment: environment)
    }

    /// The plugins to run: `--plugins` if given, else `[harp] plugins`, else every plugin
    /// that has a section in the file.
    public func selection(override: [String]?) -> [String] {
        override ?? settings.plugins ?? sectionOrder
    }
}
