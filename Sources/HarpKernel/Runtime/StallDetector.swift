import CShims
import CoreMetrics
import Glibc
import Logging
import Synchronization

/// Watches every loop from a thread of its own: a loop that stays in one round is stalled —
/// every connection, timer and task it owns waits behind it — whatever the cause (a syscall
/// that blocked, a long computation, a bug). One slow peer must never do that, so a stall is
/// logged, counted, and, held long enough, ends the process for its supervisor to restart.
///
/// - A round at least `[harp] stall_warning` long is logged when it ends, with what the loop
///   was running (sampled while it lasted): `loop 0 stalled for 312 ms (in …)` — a warning,
///   an error from 1 s on — and counted in `harp_loop_stalls_total` and
///   `harp_loop_stall_seconds`.
/// - A round still going after 1 s is logged at once (`… so far`), so a loop that never comes
///   back is reported while it is stuck.
/// - The watchdog (`[harp] watchdog`, HaRP's `HP_WATCHDOG_*`): a round longer than
///   interval × fails ends harp with exit status 70 and a line naming the loop.
/// - Under systemd, `WATCHDOG=1` goes out only while every loop turns.
public final class StallDetector: Sendable {
    /// Exit status when the watchdog ends harp (EX_SOFTWARE).
    public static let watchdogExitStatus: Int32 = 70
    /// Stalls this long are errors, and are logged while they last.
    static let severe: UInt64 = 1_000_000_000

    private let loops: [EventLoop]
    private let warning: UInt64
    private let watchdogLimit: UInt64?
    private let notifier: ServiceNotifier?
    private let logger: Logger
    private let stopping = Atomic<Bool>(false)
    private let counters: [Counter]
    private let timers: [CoreMetrics.Timer]

    /// `warning` 0 turns stall reports off (the watchdog still runs).
    public init(loops: [EventLoop], warning: Duration, watchdogLimit: Duration?, notifier: ServiceNotifier?, logger: Logger) {
        self.loops = loops
        self.warning = warning.nanoseconds
        self.watchdogLimit = watchdogLimit?.nanoseconds
        self.notifier = notifier
        self.logger = logger
        counters = loops.map { Counter(label: "harp_loop_stalls_total", dimensions: [("loop", "\($0.index)")]) }
        timers = loops.map { Timer(label: "harp_loop_stall_seconds", dimensions: [("loop", "\($0.index)")], preferredDisplayUnit: .seconds) }
        for loop in loops where self.warning > 0 { loop.pulse.stallLimit.store(self.warning, ordering: .relaxed) }
    }

    /// Starts the detector's thread.
    public func start() {
        DetachedThread.start(name: "harp-stalls") { [self] in run() }
    }

    public func stop() { stopping.store(true, ordering: .relaxed) }

    /// A quarter of the warning limit (so a stall is sampled at least three times while it
    /// lasts), at most 250 ms: 40 wake-ups a second at the default 100 ms, nothing measurable.
    private var tick: UInt64 {
        let quarter = warning > 0 ? warning / 4 : 250_000_000
        return max(5_000_000, min(quarter, 250_000_000))
    }

    private func run() {
        var watched = loops.map { _ in Episode() }
        var nextNotify: UInt64 = 0
        while !stopping.load(ordering: .relaxed) {
            var pause = timespec(tv_sec: Int(tick / 1_000_000_000), tv_nsec: Int(tick % 1_000_000_000))
            nanosleep(&pause, nil)
            let now = EventLoop.monotonicNanos()
            var allTurning = true
            for (index, loop) in loops.enumerated() {
                if let finished = loop.pulse.takeFinishedStall() {
                    report(loop: index, length: finished.length,
                           activity: watched[index].start == finished.start ? watched[index].activity : nil)
                }
                guard let start = loop.pulse.roundStart else { continue }
                // The loop may have begun this round after `now` was read.
                let elapsed = now > start ? now - start : 0
                if elapsed >= (warning > 0 ? warning : Self.severe) { allTurning = false }
                if warning > 0 && elapsed >= warning {
                    if watched[index].start != start {
                        watched[index] = Episode(start: start, activity: loop.pulse.activity)
                    }
                    if elapsed >= Self.severe && !watched[index].toldSoFar {
                        watched[index].toldSoFar = true
                        logger.error("loop \(index) stalled for \(elapsed / 1_000_000) ms so far (in \(watched[index].activity ?? "a task"))")
                    }
                }
                if let watchdogLimit, elapsed >= watchdogLimit {
                    logger.critical("loop \(index) stalled for \(elapsed / 1_000_000) ms (in \(loop.pulse.activity)): the watchdog ends harp (exit \(Self.watchdogExitStatus)) so that it is restarted")
                    LogWriter.standardError.flush(timeout: .milliseconds(500))
                    _exit(Self.watchdogExitStatus)
                }
            }
            if let notifier, let period = notifier.watchdogPeriod, allTurning, now >= nextNotify {
                notifier.send("WATCHDOG=1")
                nextNotify = now + period / 2
            }
        }
    }

    private func report(loop index: Int, length: UInt64, activity: String?) {
        counters[index].increment()
        timers[index].recordNanoseconds(Int64(clamping: length))
        let line: Logger.Message = "loop \(index) stalled for \(length / 1_000_000) ms (in \(activity ?? "a task"))"
        if length >= Self.severe { logger.error(line) } else { logger.warning(line) }
    }

    /// The stall a loop is in, as the detector saw it: the round's start and what it ran.
    private struct Episode {
        var start: UInt64 = 0
        var activity: String?
        var toldSoFar = false
    }
}
