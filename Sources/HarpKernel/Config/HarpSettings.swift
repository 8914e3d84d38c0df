import CShims
import Glibc
import Logging

/// The `[harp]` section: settings of the kernel itself.
public struct HarpSettings: Codable, Sendable {
    /// Event loops (one thread and one io_uring each); 0 means automatic (`loopCount`).
    public var threads: Int
    public var logLevel: LogLevelName
    /// How long open connections may go on after SIGINT/SIGTERM before harp exits.
    public var shutdownGrace: ConfigDuration
    /// Which plugins run when `--plugins` is not given; nil means those with a config section.
    public var plugins: [String]?
    /// Submission queue size of each loop's ring.
    public var ringEntries: Int
    /// A loop round at least this long is logged as a stall and counted; 0 turns it off.
    public var stallWarning: ConfigDuration
    /// HaRP's self-healing watchdog (`HP_WATCHDOG_*`): a loop stalled for
    /// `watchdogInterval` × `watchdogFails` makes harp exit non-zero so that its supervisor
    /// (Docker's restart policy, systemd) starts it again.
    public var watchdog: Bool
    public var watchdogInterval: ConfigDuration
    public var watchdogFails: Int

    public init() {
        threads = 0
        logLevel = .info
        shutdownGrace = .seconds(10)
        plugins = nil
        ringEntries = 4096
        stallWarning = .milliseconds(100)
        watchdog = true
        watchdogInterval = .seconds(10)
        watchdogFails = 12
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case threads, logLevel = "log_level", shutdownGrace = "shutdown_grace", plugins, ringEntries = "ring_entries"
        case stallWarning = "stall_warning", watchdog, watchdogInterval = "watchdog_interval", watchdogFails = "watchdog_fails"
    }

    public init(from decoder: any Decoder) throws {
        let defaults = HarpSettings()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        threads = try c.decodeIfPresent(Int.self, forKey: .threads) ?? defaults.threads
        logLevel = try c.decodeIfPresent(LogLevelName.self, forKey: .logLevel) ?? defaults.logLevel
        shutdownGrace = try c.decodeIfPresent(ConfigDuration.self, forKey: .shutdownGrace) ?? defaults.shutdownGrace
        plugins = try c.decodeIfPresent([String].self, forKey: .plugins)
        ringEntries = try c.decodeIfPresent(Int.self, forKey: .ringEntries) ?? defaults.ringEntries
        stallWarning = try c.decodeIfPresent(ConfigDuration.self, forKey: .stallWarning) ?? defaults.stallWarning
        watchdog = try c.decodeIfPresent(Bool.self, forKey: .watchdog) ?? defaults.watchdog
        watchdogInterval = try c.decodeIfPresent(ConfigDuration.self, forKey: .watchdogInterval) ?? defaults.watchdogInterval
        watchdogFails = try c.decodeIfPresent(Int.self, forKey: .watchdogFails) ?? defaults.watchdogFails
        guard (0...1024).contains(threads) else {
            throw ConfigError.invalid(key: "harp.threads", value: "\(threads)", reason: "expected 0 (automatic: half the usable CPUs) to 1024")
        }
        guard (64...32768).contains(ringEntries), ringEntries & (ringEntries - 1) == 0 else {
            throw ConfigError.invalid(key: "harp.ring_entries", value: "\(ringEntries)", reason: "expected a power of two from 64 to 32768")
        }
        guard watchdogInterval.duration >= .seconds(1) else {
            throw ConfigError.invalid(key: "harp.watchdog_interval", value: "\(watchdogInterval)", reason: "expected at least 1s")
        }
        guard (1...10_000).contains(watchdogFails) else {
            throw ConfigError.invalid(key: "harp.watchdog_fails", value: "\(watchdogFails)", reason: "expected 1 to 10000")
        }
    }

    /// Loops to start: `threads`, or half the CPUs harp may use (rounded up; its affinity mask
    /// and any cgroup CPU quota count, not the machine's cores). harp usually shares its host
    /// with what it fronts (Nextcloud, PHP, ExApps, the origin): on this 2-core machine with
    /// wrk and an nginx origin beside it, two loops served 1 KiB requests at 0.95–0.99× nginx
    /// where one loop made 1.05× — a loop per core competes with the neighbours it serves.
    /// A dedicated proxy host sets `threads` to its core count.
    /// How long a loop may stay in one round before the watchdog ends harp; nil when off.
    public var watchdogLimit: Duration? {
        watchdog ? watchdogInterval.duration * watchdogFails : nil
    }

    public var loopCount: Int {
        threads > 0 ? threads : max(1, (Int(harp_usable_cpus()) + 1) / 2)
    }
}

/// A log level as written in config.
public enum LogLevelName: String, Codable, Sendable, CaseIterable {
    case trace, debug, info, notice, warning, error, critical

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let level = LogLevelName(rawValue: text) else {
            throw ConfigValueProblem("expected one of \(Self.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self = level
    }

    public var level: Logger.Level { Logger.Level(rawValue: rawValue)! }
}
