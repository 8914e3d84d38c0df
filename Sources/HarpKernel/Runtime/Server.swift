import CShims
import Dispatch
import Glibc
import Logging
import Synchronization

/// `harp serve`: starts the loops and the selected plugins, then waits for signals.
/// SIGINT/SIGTERM stop accepting, give open connections the grace period, and exit 0;
/// SIGHUP asks every plugin to reload.
public final class Server {
    public enum Failure: Error, CustomStringConvertible {
        case config(ConfigError)
        case ring(RingUnavailable)
        case startup(plugin: String, message: String)

        public var description: String {
            switch self {
            case .config(let error): "\(error)"
            case .ring(let error): "harp: \(error)"
            case .startup(let plugin, let message): "harp: plugin \(plugin) failed to start: \(message)"
            }
        }
    }

    let config: ConfigFile
    let order: [any Plugin.Type]
    let logger: Logger
    private(set) var loops: [EventLoop] = []
    private var plugins: [any Plugin] = []
    private let signals: Int32
    private let notifier: ServiceNotifier?
    private var detector: StallDetector?

    /// Checks the configuration and the plugin selection; nothing is started yet.
    /// Signals are blocked here, before any thread exists, so every thread inherits the mask.
    public init(config: ConfigFile, selection: [String]?, registry: PluginRegistry) throws(Failure) {
        signals = harp_signalfd_for_shutdown()
        self.config = config
        do {
            order = try registry.resolve(config.selection(override: selection))
        } catch {
            throw .config(error)
        }
        logger = Logger(label: "harp")
        notifier = ServiceNotifier(environment: ProcessEnvironment.current())
    }

    /// Starts loops and plugins. On failure everything started so far is stopped again.
    public func start() throws(Failure) {
        raiseFileLimit()
        MetricsExport.bootstrap()
        do {
            for index in 0..<config.settings.loopCount {
                loops.append(try EventLoop(index: index, ringEntries: UInt32(config.settings.ringEntries)))
            }
        } catch {
            loops.forEach { $0.shutdown() }
            throw .ring(error)
        }
        let detector = StallDetector(loops: loops, warning: config.settings.stallWarning.duration,
                                     watchdogLimit: config.settings.watchdogLimit, notifier: notifier, logger: logger)
        detector.start()
        self.detector = detector
        // Build every plugin first (in dependency order), then start them: a plugin may
        // register itself with a dependency (a route provider with http) while being built,
        // and must do so before that dependency starts serving.
        let instances = PluginInstances()
        var current = order.first?.name ?? ""
        do {
            for type in order {
                current = type.name
                let context = PluginContext(loops: loops, logger: Logger(label: "harp.\(type.name)"),
                                            settings: config.settings, origins: config.origins, instances: instances)
                instances.append(try PluginLoader.make(type, section: config.sections[type.name], context: context))
            }
            try ConfiguredAddress.checkDistinct(instances.all.flatMap(\.listenAddresses), origins: config.origins)
            for plugin in instances.all {
                current = type(of: plugin).name
                try blockingAwait { try await plugin.start() }
                plugins.append(plugin)
            }
        } catch let error as ConfigError {
            stopAll()
            throw .config(error)
        } catch {
            stopAll()
            throw .startup(plugin: current, message: "\(error)")
        }
    }

    /// Lines describing what runs where, for the startup banner.
    public var endpoints: [String] {
        plugins.flatMap { plugin in plugin.endpoints.map { "\(type(of: plugin).name): \($0)" } }
    }

    /// Tells a service manager that harp serves (`READY=1`); `harp serve` calls it once its
    /// listeners are up and it has printed `harp: ready`.
    public func announceReady() {
        notifier?.send("READY=1")
        #if DEBUG
        freezeForTests()
        #endif
    }

    /// Blocks until SIGINT/SIGTERM, then shuts down gracefully. Returns the exit status.
    public func waitForShutdown() -> Int32 {
        var info = [UInt8](repeating: 0, count: 128)  // struct signalfd_siginfo
        var pollFD = pollfd(fd: signals, events: Int16(POLLIN), revents: 0)
        while true {
            guard Glibc.poll(&pollFD, 1, -1) > 0 else { continue }
            guard Glibc.read(signals, &info, 128) == 128 else { continue }
            let signal = info.withUnsafeBytes { $0.load(as: UInt32.self) }
            if signal == UInt32(SIGHUP) {
                logger.info("SIGHUP: reloading")
                for plugin in plugins { blockingAwait { await plugin.reload() } }
                continue
            }
            logger.info("signal \(signal): stopping; open connections get \(config.settings.shutdownGrace)")
            break
        }
        notifier?.send("STOPPING=1")
        ShutdownDeadline(signals: signals, limit: config.settings.shutdownGrace.duration + .seconds(1), logger: logger).start()
        drain()
        detector?.stop()
        return 0
    }

    /// Stops accepting, then waits until no connection is open or the grace period is over.
    func drain() {
        for plugin in plugins.reversed() { blockingAwait { await plugin.stopAccepting() } }
        let deadline = EventLoop.monotonicNanos() + config.settings.shutdownGrace.duration.nanoseconds
        while openConnections > 0 && EventLoop.monotonicNanos() < deadline {
            usleep(20_000)
        }
        if openConnections > 0 {
            logger.warning("grace period over: closing \(openConnections) open connection(s)")
        }
        loops.forEach { $0.shutdown() }
    }

    public var openConnections: Int {
        loops.reduce(0) { $0 + $1.openConnections.load(ordering: .relaxed) }
    }

    private func stopAll() {
        for plugin in plugins.reversed() { blockingAwait { await plugin.stopAccepting() } }
        detector?.stop()
        loops.forEach { $0.shutdown() }
    }

    #if DEBUG
    /// Debug builds only: `HARP_DEBUG_FREEZE_LOOP=N:SECONDS:AFTER` blocks loop N's thread for
    /// SECONDS, AFTER seconds after harp is ready — the frozen loop the watchdog and stall
    /// tests need.
    private func freezeForTests() {
        guard let spec = ProcessEnvironment.current()["HARP_DEBUG_FREEZE_LOOP"] else { return }
        let parts = spec.split(separator: ":").compactMap { UInt32($0) }
        guard parts.count == 3, loops.indices.contains(Int(parts[0])) else { return }
        let (loop, seconds, after) = (loops[Int(parts[0])], parts[1], parts[2])
        let logger = self.logger
        loop.spawn {
            let timer = AsyncCompletion()
            _ = await loop.sleep(for: .seconds(after), using: timer)
            logger.warning("HARP_DEBUG_FREEZE_LOOP: freezing loop \(loop.index) for \(seconds) s")
            sleep(seconds)
        }
    }
    #endif
}

/// After the first SIGINT/SIGTERM: a second one ends harp at once, and so does the end of the
/// grace period + 1 s, whatever the connections, plugins or a stuck loop are doing — a stop
/// signal is always obeyed. Runs on a thread of its own, beside the drain; from then on it is
/// the only reader of the signalfd.
struct ShutdownDeadline: Sendable {
    let signals: Int32
    let limit: Duration
    let logger: Logger

    func start() {
        DetachedThread.start(name: "harp-shutdown") { [self] in run() }
    }

    private func run() {
        let end = EventLoop.monotonicNanos() + limit.nanoseconds
        var info = [UInt8](repeating: 0, count: 128)  // struct signalfd_siginfo
        var pollFD = pollfd(fd: signals, events: Int16(POLLIN), revents: 0)
        while true {
            let now = EventLoop.monotonicNanos()
            guard now < end else {
                logger.error("shutdown is not done \(limit) after the signal: exiting now")
                LogWriter.standardError.flush(timeout: .milliseconds(200))
                _exit(1)
            }
            guard Glibc.poll(&pollFD, 1, Int32(min(100, (end - now) / 1_000_000 + 1))) > 0,
                  Glibc.read(signals, &info, 128) == 128 else { continue }
            let signal = info.withUnsafeBytes { $0.load(as: UInt32.self) }
            if signal == UInt32(SIGINT) || signal == UInt32(SIGTERM) {
                logger.warning("second signal \(signal): exiting now")
                LogWriter.standardError.flush(timeout: .milliseconds(200))
                _exit(1)
            }
        }
    }

}

/// Runs async work from the main thread, which is not part of Swift's cooperative pool and
/// may block. Used only at startup and shutdown.
func blockingAwait(_ body: @escaping @Sendable () async throws -> Void) throws {
    let done = DispatchSemaphore(value: 0)
    let failure = ErrorBox()
    Task {
        do { try await body() } catch { failure.error = error }
        done.signal()
    }
    done.wait()
    if let error = failure.error { throw error }
}

func blockingAwait(_ body: @escaping @Sendable () async -> Void) {
    try? blockingAwait { () async throws in await body() }
}

private final class ErrorBox: @unchecked Sendable {
    // @unchecked Sendable: written by the task before it signals, read after the wait.
    var error: (any Error)?
}

/// Raises the soft limit on open files to the hard limit: each relayed connection holds two
/// sockets and two pipes (six descriptors), so the common default of 1024 caps harp at ~170.
public func raiseFileLimit() {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    limit.rlim_cur = min(limit.rlim_max, 1 << 20)
    setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}
