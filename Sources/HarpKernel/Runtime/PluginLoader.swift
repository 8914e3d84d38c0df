/// Builds plugins from their config sections. Generic over the concrete plugin type so that
/// each plugin's `Configuration` is decoded with its own `Decodable` conformance.
enum PluginLoader {
    static func configuration<P: Plugin>(_ type: P.Type, section: ConfigValue?) throws(ConfigError) -> P.Configuration {
        guard let section else { return P.defaultConfiguration }
        return try ConfigDecoder.decode(P.Configuration.self, from: section, path: P.section)
    }

    static func make<P: Plugin>(_ type: P.Type, section: ConfigValue?, context: PluginContext) throws -> P {
        let configuration = try configuration(type, section: section)
        return try P(configuration: configuration, context: context)
    }

    /// The effective section (defaults filled in), for `harp config check`. The plugin is
    /// built (without loops) so that its own validation runs too.
    /// The section with defaults filled in; the plugin is built too (its `init` validates
    /// what decoding cannot) and added to `instances`, so plugins that depend on it are built
    /// as they would be at startup.
    static func effective<P: Plugin>(_ type: P.Type, section: ConfigValue?, context: PluginContext) throws -> ConfigValue {
        let configuration = try configuration(type, section: section)
        context.instances.append(try P(configuration: configuration, context: context))
        return ConfigEncoder.encode(configuration)
    }
}
