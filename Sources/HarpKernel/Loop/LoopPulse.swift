import Synchronization

/// What a loop tells the stall detector, written by the loop's thread and read by the
/// detector's: when the current round began (0 while the loop waits in the ring) and which
/// kind of completion it is running (none while it runs tasks' jobs).
///
/// A loop that stays in one round is stalled: every connection, timer and task of that loop
/// waits behind it. The detector names what it was doing from `runningType`, the type of the
/// completion record (`SpliceRelay.Direction`, `Listener`), read from another thread only as
/// a metatype, which lives as long as the process.
final class LoopPulse: Sendable {
    private let started = Atomic<UInt64>(0)
    private let runningType = Atomic<UInt>(0)
    /// Rounds at least this long are reported (set by the detector; never, until it runs).
    let stallLimit = Atomic<UInt64>(.max)
    /// A finished long round the detector has not reported yet: (start, length).
    private let finished = Mutex<(start: UInt64, length: UInt64)?>(nil)

    @inline(__always)
    func roundStarted(at now: UInt64) { started.store(now | 1, ordering: .relaxed) }

    /// The round that began at `start` is over: measure it (one coarse clock read) and leave
    /// a long one for the detector, which logs it off the loop. The lock is taken only then.
    @inline(__always)
    func roundEnded(startedAt start: UInt64) {
        let length = EventLoop.monotonicNanos() &- start
        guard length >= stallLimit.load(ordering: .relaxed) else { return }
        finished.withLock { $0 = (start | 1, length) }
    }

    /// The long round that ended since the last call, if any.
    func takeFinishedStall() -> (start: UInt64, length: UInt64)? {
        finished.withLock { value in
            defer { value = nil }
            return value
        }
    }

    @inline(__always)
    func waiting() { started.store(0, ordering: .relaxed) }

    @inline(__always)
    func running(_ type: IOCompletion.Type?) {
        runningType.store(type.map { UInt(bitPattern: ObjectIdentifier($0)) } ?? 0, ordering: .relaxed)
    }

    /// The start of the round in progress (monotonic coarse ns, its lowest bit set so that a
    /// start at 0 is told from waiting), or nil while the loop waits.
    var roundStart: UInt64? {
        let value = started.load(ordering: .relaxed)
        return value == 0 ? nil : value
    }

    /// What the loop is running now, for a log line.
    var activity: String {
        let bits = runningType.load(ordering: .relaxed)
        guard bits != 0, let pointer = UnsafeRawPointer(bitPattern: bits) else { return "a task" }
        let type: any AnyObject.Type = unsafeBitCast(pointer, to: AnyObject.Type.self)
        return "a completion of \(String(reflecting: type))"
    }
}
