import ArgumentParser
import Glibc
import HarpKernel
import Logging
import HarpBench

@main
struct Harp: ParsableCommand {
    static let version = "0.1.0"

    /// harp's own commands (and `harp bench`, the transfer fixture); plugins add theirs
    /// through the plugin list (`Plugin.commands`).
    static let builtIn: [any ParsableCommand.Type] = [Serve.self, Plugins.self, Config.self] + HarpBenchCommands.all

    static let configuration = CommandConfiguration(
        commandName: "harp",
        abstract: "Nextcloud ExApp gateway and peer-to-peer storage node.",
        version: version,
        subcommands: builtIn + registeredPlugins.commands,
        defaultSubcommand: Serve.self
    )

    static func main() {
        PluginRegistry.executable = registeredPlugins
        for type in registeredPlugins.types { type.prepareCommands() }
        // Two commands with one name would make one of them unreachable: refuse to run.
        let conflicts = registeredPlugins.commandConflicts(reserved: builtIn.map { $0._commandName })
        if !conflicts.isEmpty { fail("harp: command names claimed twice: \(conflicts.joined(separator: "; "))") }
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}

/// Options shared by commands that read a configuration.
struct ConfigOptions: ParsableArguments {
    @Option(name: .long, help: "A TOML config file (default: the embedded loopback config).")
    var config: String?

    /// The file, or a plugin's set-up asked for by the environment (HaRP's variables), or
    /// the embedded default; environment variables apply over each.
    func load() throws(ConfigError) -> ConfigFile {
        try ConfigFile.resolve(path: config, registry: registeredPlugins, environment: ProcessEnvironment.current(),
                               fallback: (defaultConfigTOML, "<embedded default config>"))
    }
}

/// Prints one line to standard error and exits non-zero.
func fail(_ message: String) -> Never {
    LogWriter.standardError.flush()
    let line = Array((message + "\n").utf8)
    _ = line.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    exit(1)
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the selected plugins until SIGINT/SIGTERM.")

    @OptionGroup var options: ConfigOptions

    @Option(name: .long, help: "Comma-separated plugins to run (default: [harp] plugins, else every configured plugin).")
    var plugins: String?

    func run() throws {
        let config: ConfigFile
        do { config = try options.load() } catch { fail("\(error)") }
        let level = config.settings.logLevel.level
        LoggingSystem.bootstrap { LogWriter.Handler(label: $0, level: level) }
        let selection = plugins.map { $0.split(separator: ",").map { String($0).trimmed } }
        let server: Server
        do {
            server = try Server(config: config, selection: selection, registry: registeredPlugins)
            try server.start()
        } catch { fail("\(error)") }
        print("harp \(Harp.version): \(config.settings.loopCount) loop(s)")
        for line in server.endpoints { print("  \(line)") }
        print("harp: ready")
        fflush(nil)
        server.announceReady()
        let status = server.waitForShutdown()
        LogWriter.standardError.flush()
        Glibc.exit(status)
    }
}

struct Plugins: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the plugins compiled into harp.")

    func run() {
        let width = registeredPlugins.names.map(\.count).max() ?? 0
        for type in registeredPlugins.types {
            let dependencies = type.dependencies.isEmpty ? "" : " (needs \(type.dependencies.joined(separator: ", ")))"
            print(type.name + String(repeating: " ", count: width - type.name.count) + "  " + type.summary + dependencies)
        }
    }
}

struct Config: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Work with configuration files.", subcommands: [Check.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Validate a config and print the effective configuration.")

        @OptionGroup var options: ConfigOptions

        func run() {
            do {
                let config = try options.load()
                let text = try EffectiveConfig.render(config, registry: registeredPlugins)
                print(text, terminator: "")
            } catch {
                fail("\(error)")
            }
        }
    }
}

extension String {
    var trimmed: String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
