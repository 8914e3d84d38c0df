import Logging

/// The configuration as harp will run it, defaults filled in, as TOML.
public enum EffectiveConfig {
    public static func render(_ config: ConfigFile, registry: PluginRegistry) throws -> String {
        let selected = try registry.resolve(config.selection(override: nil))
        var document = ConfigValue.table([("harp", ConfigEncoder.encode(config.settings))])
        let instances = PluginInstances()
        for type in selected {
            let context = PluginContext(loops: [], logger: Logger(label: "harp.\(type.name)"),
                                        settings: config.settings, origins: config.origins, instances: instances)
            document.set(type.section, try PluginLoader.effective(type, section: config.sections[type.name], context: context))
        }
        try ConfiguredAddress.checkDistinct(instances.all.flatMap(\.listenAddresses), origins: config.origins)
        return document.renderTOML()
    }
}
