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
        return redacted(document).renderTOML()
    }

    /// Keys whose values are secrets (`shared_key`, frp's `token`): `harp config check` output
    /// ends up in bug reports and chat, so it shows that a secret is set, never the secret.
    static func isSecret(_ key: String) -> Bool {
        key == "token" || key.hasSuffix("shared_key") || key.hasSuffix("password") || key.hasSuffix("secret")
    }

    static func redacted(_ value: ConfigValue) -> ConfigValue {
        switch value {
        case .table(let pairs):
            return .table(pairs.map { key, value in
                if isSecret(key), case .string(let text) = value { return (key, .string(text.isEmpty ? "" : "(hidden)")) }
                return (key, redacted(value))
            })
        case .array(let items):
            return .array(items.map(redacted))
        default:
            return value
        }
    }
}
