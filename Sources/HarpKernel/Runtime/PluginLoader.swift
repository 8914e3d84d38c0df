/// Builds plugins from their config sections. Generic over the concrete plugin type so that
/// each plugin's `Configuration` is decoded with its own `Decodable` conformance.
enum PluginLoader {
    static func configuration<P: Plugin>(_ type: P.Type, section: ConfigValue?) throws(ConfigError) -> P.Configuration {
        guard let section else { return P.defaultConfiguration }
        return try ConfigDecoder.decode(P.Configuration.self, from: section, path: P.name)
    }

    static func make<P: Plugin>(_ type: P.Type, section: ConfigValue?, context: PluginContext) throws -> P {
        let configuration = try configuration(type, section: section)
        return try P(configuration: configuration, context: context)
    }

    /// The effective section (defaults filled in), for `harp config check`. The plugin is
    /// built (without loops) so that its own validation runs too.
    static func effective<P: Plugin>(_ type: P.Type, section: ConfigValue?, context: PluginContext) throws -> ConfigValue {
        let configuration = try configuration(type, section: section)
        _ = try P(configuration: configuration, context: context)
        return ConfigEncoder.encode(configuration)
    }
}
