import ArgumentParser
import Logging

/// A unit of harp's behaviour, statically registered in the executable's plugin list.
///
/// Lifecycle: the kernel decodes the plugin's config section, calls `init` once (validate
/// everything there: a config problem must stop startup before anything listens), then
/// `start()` in dependency order. On SIGINT/SIGTERM it calls `stopAccepting()` on every
/// plugin, waits up to the grace period for open connections to finish, and exits.
public protocol Plugin: AnyObject, Sendable {
    associatedtype Configuration: Codable & Sendable

    /// The name used in `--plugins`, in logs and metrics, and (unless `section` says
    /// otherwise) as the config section.
    static var name: String { get }
    /// The config section (`[storage]` for the `p2p` plugin, whose keys users know by that
    /// name); default: `name`.
    static var section: String { get }
    /// One line for `harp plugins`.
    static var summary: String { get }
    /// Plugins that must run too; harp refuses a selection that lacks one.
    static var dependencies: [String] { get }
    /// The configuration when the file has no section for this plugin.
    static var defaultConfiguration: Configuration { get }

    /// Subcommands this plugin adds to `harp` (`harp tunnel`, `harp storage …`), listed with
    /// the plugin in the executable's one static list — `Harp.swift` names none of them. A
    /// command runs in its own process (it may talk to a running node); it does not need the
    /// plugin to be selected. Two plugins may not add commands with the same name.
    static var commands: [any ParsableCommand.Type] { get }

    /// Called once before any command is parsed: a plugin wires what its commands (or another
    /// plugin's) need from it — the crdt plugin's answers for a stopped node.
    static func prepareCommands()

    /// Settings this plugin's environment variables make over the config file (HaRP's
    /// `HP_*` for the ExApps gateway). Throw `ConfigError.environment` naming a variable that
    /// is wrong. Sections of other plugins may be set too (HaRP's timeouts are the http
    /// plugin's).
    static func environmentOverrides(_ environment: [String: String]) throws(ConfigError) -> [ConfigOverride]

    /// A whole configuration to run when `harp serve` has no `--config` and the environment
    /// asks for this plugin's set-up (HaRP's two variables); nil when it does not. The
    /// overrides are applied over it as over a file.
    static func environmentDefault(_ environment: [String: String]) throws(ConfigError) -> String?

    /// Builds the plugin from its validated configuration. Throw `ConfigError` for values
    /// that decode but make no sense (naming the key, the value and what is allowed).
    init(configuration: Configuration, context: PluginContext) throws

    /// Binds listeners and starts serving. Errors (a port in use) abort startup.
    func start() async throws

    /// Stops taking new work; open connections go on until they end or the grace period ends.
    func stopAccepting() async

    /// SIGHUP: re-read whatever can change without a restart (certificates, for example).
    func reload() async

    /// Human-readable lines for the startup banner: where this plugin listens.
    var endpoints: [String] { get }

    /// Every address this plugin will listen on, with the key it came from: harp refuses a
    /// configuration in which two listeners (of any plugins) claim one address.
    var listenAddresses: [ConfiguredAddress] { get }
}

extension Plugin {
    public static var section: String { name }
    public static var dependencies: [String] { [] }
    public static var commands: [any ParsableCommand.Type] { [] }
    public static func prepareCommands() {}
    public static func environmentOverrides(_ environment: [String: String]) throws(ConfigError) -> [ConfigOverride] { [] }
    public static func environmentDefault(_ environment: [String: String]) throws(ConfigError) -> String? { nil }
    public func stopAccepting() async {}
    public func reload() async {}
    public var endpoints: [String] { [] }
    public var listenAddresses: [ConfiguredAddress] { [] }
}

/// What the kernel hands a plugin: the loops to run on, a logger, and the other plugins.
public struct PluginContext: Sendable {
    public let loops: [EventLoop]
    public let logger: Logger
    public let settings: HarpSettings
    /// Which keys environment variables set: `origins.describe(key)` in messages.
    public let origins: ConfigOrigins
    let instances: PluginInstances

    init(loops: [EventLoop], logger: Logger, settings: HarpSettings, origins: ConfigOrigins, instances: PluginInstances) {
        self.loops = loops
        self.logger = logger
        self.settings = settings
        self.origins = origins
        self.instances = instances
    }

    /// A context for a plugin run on its own (embedding, tests): it has no other plugins.
    public init(loops: [EventLoop], logger: Logger, settings: HarpSettings) {
        self.init(loops: loops, logger: logger, settings: settings, origins: ConfigOrigins(), instances: PluginInstances())
    }

    /// A plugin this one declared as a dependency (started before this one).
    public func dependency<P: Plugin>(_ type: P.Type) -> P? {
        instances.first(of: type)
    }
}

/// The running plugin instances, in start order.
final class PluginInstances: @unchecked Sendable {
    // @unchecked Sendable: appended to only during startup on one thread, read-only after.
    private(set) var all: [any Plugin] = []
    func append(_ plugin: any Plugin) { all.append(plugin) }
    func first<P: Plugin>(of type: P.Type) -> P? { all.lazy.compactMap { $0 as? P }.first }
}
