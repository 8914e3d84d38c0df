import ArgumentParser

/// The executable's one static list of plugin types (like nginx's `ngx_modules[]`), and the
/// rules for choosing which of them run.
public struct PluginRegistry: Sendable {
    public let types: [any Plugin.Type]

    public init(_ types: [any Plugin.Type]) {
        self.types = types
    }

    /// Every plugin's subcommands, in list order. A name used twice (by two plugins, or by a
    /// plugin and one of `reserved`, the executable's own commands) is a programming error
    /// caught by `commandConflicts`, which the test suite checks.
    public var commands: [any ParsableCommand.Type] {
        types.flatMap { $0.commands }
    }

    /// Command names claimed twice, each with who claims it (empty when all is well).
    public func commandConflicts(reserved: [String]) -> [String] {
        var owners: [String: [String]] = [:]
        for name in reserved { owners[name, default: []].append("harp") }
        for type in types {
            for command in type.commands { owners[command._commandName, default: []].append(type.name) }
        }
        return owners.filter { $0.value.count > 1 }.map { "\($0.key): \($0.value.joined(separator: ", "))" }.sorted()
    }

    public var names: [String] { types.map { $0.name } }

    public func type(named name: String) -> (any Plugin.Type)? {
        types.first { $0.name == name }
    }

    /// The plugin whose config section is `section`.
    public func type(section: String) -> (any Plugin.Type)? {
        types.first { $0.section == section }
    }

    /// Resolves a selection into start order (dependencies first). Unknown names and missing
    /// dependencies are errors that name the plugin.
    public func resolve(_ selection: [String]) throws(ConfigError) -> [any Plugin.Type] {
        var ordered: [any Plugin.Type] = []
        for name in selection {
            guard type(named: name) != nil else {
                throw .plugins("unknown plugin \"\(name)\"; registered plugins: \(names.joined(separator: ", "))")
            }
        }
        func visit(_ name: String, chain: [String]) throws(ConfigError) {
            guard !ordered.contains(where: { $0.name == name }) else { return }
            guard let plugin = type(named: name) else {
                throw .plugins("plugin \"\(chain.last!)\" depends on \"\(name)\", which is not registered")
            }
            guard !chain.contains(name) else {
                throw .plugins("plugin dependency cycle: \((chain + [name]).joined(separator: " -> "))")
            }
            for dependency in plugin.dependencies {
                guard selection.contains(dependency) else {
                    throw .plugins("plugin \"\(name)\" needs plugin \"\(dependency)\"; add it to --plugins or [harp] plugins")
                }
                try visit(dependency, chain: chain + [name])
            }
            ordered.append(plugin)
        }
        for name in selection { try visit(name, chain: []) }
        return ordered
    }
}
