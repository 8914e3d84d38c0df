/// How `harp serve` and plugins' commands (`harp exapps check`) find the configuration: the
/// file, else a plugin's set-up asked for by the environment (HaRP's variables), else the
/// fallback. Environment overrides apply to each. One function, so that a command checks
/// exactly what `harp serve` would run.
extension ConfigFile {
    public static func resolve(path: String?, registry: PluginRegistry, environment: [String: String],
                               fallback: (text: String, source: String)?) throws(ConfigError) -> ConfigFile {
        if let path {
            return try load(path: path, registry: registry, environment: environment)
        }
        for type in registry.types {
            if let text = try type.environmentDefault(environment) {
                return try ConfigFile(text: text, source: "<\(type.name) set-up from the environment>", registry: registry,
                                      environment: environment)
            }
        }
        guard let fallback else {
            throw .plugins("no configuration: pass --config FILE, or set the environment variables of a plugin's set-up")
        }
        return try ConfigFile(text: fallback.text, source: fallback.source, registry: registry, environment: environment)
    }

    /// A plugin's section decoded (its defaults when the document has none).
    public func configuration<P: Plugin>(of type: P.Type) throws(ConfigError) -> P.Configuration {
        try PluginLoader.configuration(type, section: sections[P.name])
    }
}

extension PluginRegistry {
    /// The executable's plugin list, for plugins' commands that read the configuration as
    /// `harp serve` does. Set once by `main` before any command is parsed; read-only after.
    nonisolated(unsafe) public static var executable = PluginRegistry([])
}
