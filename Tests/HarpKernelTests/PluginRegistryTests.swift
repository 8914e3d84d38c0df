import ArgumentParser
@testable import HarpKernel
import Testing

/// Plugins that exist only here: what the registry does with their commands and dependencies.
final class CommandPlugin: Plugin {
    static let name = "cmd"
    static let summary = "adds commands"
    static let defaultConfiguration = Empty()
    static let commands: [any ParsableCommand.Type] = [Hello.self, Group.self]
    struct Empty: Codable, Sendable {}
    struct Hello: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "hello")
        func run() {}
    }
    struct Group: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "tunnel", subcommands: [Hello.self])
    }
    init(configuration: Empty, context: PluginContext) {}
    func start() async throws {}
}

final class RivalPlugin: Plugin {
    static let name = "rival"
    static let summary = "claims a taken name"
    static let defaultConfiguration = CommandPlugin.Empty()
    static let dependencies = ["cmd"]
    static let commands: [any ParsableCommand.Type] = [CommandPlugin.Hello.self]
    init(configuration: CommandPlugin.Empty, context: PluginContext) {}
    func start() async throws {}
}

@Suite("plugin registry")
struct PluginRegistryTests {
    @Test("plugin commands are collected in list order; names claimed twice are reported with their owners")
    func commands() {
        let registry = PluginRegistry([CommandPlugin.self])
        #expect(registry.commands.map { $0._commandName } == ["hello", "tunnel"])
        #expect(registry.commandConflicts(reserved: ["serve", "plugins", "config"]).isEmpty)
        #expect(registry.commandConflicts(reserved: ["tunnel"]) == ["tunnel: harp, cmd"])
        let rivals = PluginRegistry([CommandPlugin.self, RivalPlugin.self])
        #expect(rivals.commandConflicts(reserved: []) == ["hello: cmd, rival"])
    }

    @Test("a selection lacking a dependency names the missing plugin")
    func dependencies() throws {
        let registry = PluginRegistry([CommandPlugin.self, RivalPlugin.self])
        #expect(throws: ConfigError.self) { try registry.resolve(["rival"]) }
        #expect(try registry.resolve(["rival", "cmd"]).map { $0.name } == ["cmd", "rival"])
    }
}
