import HarpKernel
import Logging
import Synchronization

/// What is wrong with Nextcloud as the gateway sees it, logged once per outage: the first
/// failed call after a good one is a warning, the calls that fail the same way after it are
/// quiet, and the first good answer says Nextcloud is back (a down Nextcloud would otherwise
/// write a warning per request).
final class NextcloudHealth: Sendable {
    enum Problem: Equatable, Sendable {
        /// No answer: the name does not resolve, the connection fails, the call times out.
        case unreachable
        /// exapp-meta or user-info answered 401/403 to harp's own key.
        case refusedKey
        /// 5xx or an answer harp cannot read.
        case failing
    }

    private struct State {
        var problem: Problem?
        var since: UInt64 = 0
        var failures = 0
        /// When Nextcloud last refused harp's key (monotonic ns; 0: never), for `harp exapps check`.
        var refusedKeyAt: UInt64 = 0
    }

    private let state = Mutex(State())
    private let accepted = Atomic(false)
    private let logger: Logger

    /// Whether Nextcloud has answered an exapp-meta call with a record: it accepts harp's key.
    var keyAccepted: Bool { accepted.load(ordering: .relaxed) }

    init(logger: Logger) { self.logger = logger }

    /// A call failed; the first of an outage (or of a different problem) is logged.
    func failed(_ problem: Problem, _ message: Logger.Message, metadata: Logger.Metadata) {
        let now = EventLoop.preciseNanos()
        let first = state.withLock { state -> Bool in
            if problem == .refusedKey { state.refusedKeyAt = now }
            state.failures += 1
            guard state.problem != problem else { return false }
            state.problem = problem
            state.since = now
            state.failures = 1
            return true
        }
        if first { logger.warning(message, metadata: metadata.merging(["further": "logged once until Nextcloud answers again"]) { $1 }) }
    }

    /// A call was answered as expected: an outage, if any, is over.
    func answered(acceptedKey: Bool = false) {
        if acceptedKey { accepted.store(true, ordering: .relaxed) }
        let now = EventLoop.preciseNanos()
        let ended = state.withLock { state -> (Problem, Int, UInt64)? in
            guard let problem = state.problem else { return nil }
            defer { state.problem = nil }
            return (problem, state.failures, now &- state.since)
        }
        if let (problem, failures, nanoseconds) = ended {
            logger.warning("Nextcloud answers again", metadata: [
                "after": "\(problem)", "failed_calls": "\(failures)", "seconds": "\(nanoseconds / 1_000_000_000)",
            ])
        }
    }

    /// Seconds since Nextcloud last refused harp's key; nil when it never did.
    var refusedKeySecondsAgo: Int? {
        let at = state.withLock { $0.refusedKeyAt }
        return at == 0 ? nil : Int((EventLoop.preciseNanos() &- at) / 1_000_000_000)
    }
}
