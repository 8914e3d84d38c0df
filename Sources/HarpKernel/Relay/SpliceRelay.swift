import CShims
import Glibc

/// Moves bytes between two sockets in both directions through kernel pipes with `splice`,
/// never copying them into user space.
///
/// Each direction is a small state machine driven by readiness: it calls `splice()` with
/// `SPLICE_F_NONBLOCK` until the kernel says EAGAIN, then posts a one-shot poll on the ring
/// and resumes when it fires. Measured here (docs/design.md): `IORING_OP_SPLICE` runs on io-wq
/// workers and costs ~50% more CPU per GB than direct splice on a ready socket.
///
/// Half-close: when one side sends FIN, that direction drains its pipe and passes the FIN on
/// with `shutdown(SHUT_WR)`; the relay ends when both directions have, on the first error,
/// or when idle for too long. The relay never closes the descriptors: the caller owns them.
///
/// The same machinery moves a body of known length one way (`transfer`): one direction with a
/// byte limit, which ends when the limit is reached and passes no FIN on.
final class SpliceRelay {
    let loop: EventLoop
    /// A direction gives the loop back after this many splice rounds even if both sockets
    /// stay ready (up to 64 MiB with 1 MiB pipes), so one fast stream cannot starve others.
    let roundsPerTurn: Int
    let idleLimit: UInt64
    let halfClosedLimit: UInt64
    private var directions: [Direction] = []
    private var timer: IdleTimer!
    fileprivate let meter: RelayMeter?
    private var inFlight = 0
    private var ending = false
    private var outcome: RelayResult.Outcome?
    private(set) var lastActivity: UInt64
    private var continuation: UnsafeContinuation<RelayResult, Never>?

    /// Both ways between `first` and `second`, or, with a `limit`, exactly `limit` bytes from
    /// `first` to `second`.
    init(loop: EventLoop, _ first: Int32, _ second: Int32, limit: Int? = nil,
         idleTimeout: Duration, halfClosedTimeout: Duration?, roundsPerTurn: Int = 64, meter: RelayMeter? = nil) {
        self.loop = loop
        self.meter = meter
        self.roundsPerTurn = roundsPerTurn
        idleLimit = idleTimeout.nanoseconds
        halfClosedLimit = min(halfClosedTimeout?.nanoseconds ?? idleLimit, idleLimit)
        lastActivity = loop.now
        directions = [Direction(relay: self, from: first, to: second, side: 0, limit: limit)]
        if limit == nil {
            directions.append(Direction(relay: self, from: second, to: first, side: 1, limit: nil))
        }
        timer = IdleTimer(relay: self)
    }

    func run() async -> RelayResult {
        loop.assertInLoop()
        assert(continuation == nil && !ending, "a relay runs once")
        return await withUnsafeContinuation { continuation in
            self.continuation = continuation
            start()
        }
    }

    private func start() {
        for direction in directions {
            // splice() into a blocking socket waits inside the syscall whatever the flags say
            // (SPLICE_F_NONBLOCK covers the pipe only): one reader that stops reading would
            // freeze the loop. Every loop socket is non-blocking from its creation.
            assert(Socket.isNonBlocking(direction.source) && Socket.isNonBlocking(direction.destination),
                   "a splice relay needs non-blocking sockets")
            guard let pipe = loop.pipes.take() else { return fail(.failed(side: direction.side, errno: EMFILE)) }
            direction.pipe = pipe
        }
        timer.arm(after: idleLimit)
        for direction in directions where !ending {
            direction.pump()
        }
    }

    @inline(__always)
    func touch() { lastActivity = loop.now }

    func submitted() { inFlight += 1 }

    /// A completion of one of the relay's own operations arrived.
    /// Returns false when the relay is ending and the caller must not continue.
    func completed() -> Bool {
        inFlight -= 1
        assert(inFlight >= 0, "a completion the relay did not submit")
        if ending {
            finishIfQuiet()
            return false
        }
        return true
    }

    func directionFinished() {
        if directions.allSatisfy(\.finished) {
            outcome = .finished
            end()
        } else if halfClosedLimit < idleLimit && timer.armed {
            // The timer was set for the longer idle limit: cut it short so that its
            // completion re-checks against the half-closed limit.
            loop.cancel(timer)
        }
    }

    func fail(_ reason: RelayResult.Outcome) {
        if outcome == nil { outcome = reason }
        end()
    }

    /// Idle check: the limit shrinks to `halfClosedLimit` once one direction is done.
    func idleCheck() {
        let limit = directions.contains(where: \.finished) ? halfClosedLimit : idleLimit
        let idle = loop.now &- lastActivity
        if idle >= limit {
            fail(.idleTimeout)
        } else {
            timer.arm(after: limit - idle)
        }
    }

    private func end() {
        guard !ending else { return }
        ending = true
        for direction in directions where direction.polling { loop.cancel(direction) }
        if timer.armed { loop.cancel(timer) }
        finishIfQuiet()
    }

    private func finishIfQuiet() {
        guard inFlight == 0, let continuation else { return }
        self.continuation = nil
        for direction in directions {
            if let pipe = direction.pipe { loop.pipes.give(pipe, empty: direction.buffered == 0) }
            direction.pipe = nil
        }
        continuation.resume(returning: RelayResult(outcome: outcome ?? .finished,
                                                   forwardBytes: directions[0].bytes,
                                                   backwardBytes: directions.count > 1 ? directions[1].bytes : 0))
    }

    /// One direction: `source` → pipe → `destination`.
    final class Direction: IOCompletion, @unchecked Sendable {
        // @unchecked Sendable: restated from IOCompletion; used only on its loop's thread.
        unowned let relay: SpliceRelay
        let source: Int32
        let destination: Int32
        let side: Int
        var pipe: Pipe?
        /// Bytes in the pipe not yet spliced out.
        var buffered = 0
        var bytes = 0
        var sourceEnded = false
        var finished = false
        var polling = false
        /// Bytes still to read from `source` for a bounded transfer; nil relays until FIN.
        var remaining: Int?

        init(relay: SpliceRelay, from source: Int32, to destination: Int32, side: Int, limit: Int?) {
            self.relay = relay
            self.source = source
            self.destination = destination
            self.side = side
            self.remaining = limit
        }

        override func complete(result: Int32, flags: UInt32) {
            assert(polling, "a poll completion for a direction that was not polling")
            polling = false
            guard relay.completed() else { return }
            pump()
        }

        func pump() {
            guard let pipe else { return }
            let flags = HARP_SPLICE_F_MOVE | HARP_SPLICE_F_NONBLOCK
            for _ in 0..<relay.roundsPerTurn {
                if buffered > 0 {
                    let moved = harp_splice(pipe.readEnd, destination, buffered, flags)
                    if moved > 0 {
                        buffered -= moved
                        bytes += moved
                        relay.meter?(side, moved)
                        relay.touch()
                        continue
                    }
                    let error = moved == 0 ? EPIPE : errno
                    if error == EAGAIN { return wait(for: destination, events: POLLOUT) }
                    return relay.fail(.failed(side: 1 - side, errno: error))
                }
                if remaining == 0 {
                    finished = true
                    return relay.directionFinished()
                }
                if sourceEnded {
                    // A bounded transfer that meets EOF early was cut off by the peer.
                    if remaining != nil { return relay.fail(.endedEarly(side: side)) }
                    // Pass the FIN on: the peer sees end-of-stream, the other way stays open.
                    shutdown(destination, Int32(SHUT_WR))
                    finished = true
                    return relay.directionFinished()
                }
                let moved = harp_splice(source, pipe.writeEnd, min(pipe.capacity, remaining ?? .max), flags)
                if moved > 0 {
                    buffered = moved
                    if let left = remaining { remaining = left - moved }
                    relay.touch()
                } else if moved == 0 {
                    sourceEnded = true
                } else if errno == EAGAIN {
                    return wait(for: source, events: POLLIN)
                } else {
                    return relay.fail(.failed(side: side, errno: errno))
                }
            }
            // A bounded transfer can end on the turn's last round: waiting for the source then
            // would wait for bytes that are not coming (the peer now waits for a response).
            if buffered == 0 && remaining == 0 {
                finished = true
                return relay.directionFinished()
            }
            // Still ready after a full turn: a poll on a ready socket completes in the next
            // loop round, after the other connections' completions.
            wait(for: buffered > 0 ? destination : source, events: buffered > 0 ? POLLOUT : POLLIN)
        }

        private func wait(for fd: Int32, events: Int32) {
            assert(!polling && !finished, "a direction waits on one poll at a time, and not once finished")
            polling = true
            relay.submitted()
            relay.loop.submit(self) { io_uring_prep_poll_add($0, fd, UInt32(events)) }
        }
    }

    /// Re-arms itself until the relay has been idle for the whole limit.
    final class IdleTimer: IOCompletion, @unchecked Sendable {
        // @unchecked Sendable: restated from IOCompletion; used only on its loop's thread.
        unowned let relay: SpliceRelay
        let timespec = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: 1)
        var armed = false

        init(relay: SpliceRelay) {
            self.relay = relay
            timespec.initialize(to: __kernel_timespec())
        }

        deinit { timespec.deallocate() }

        func arm(after nanoseconds: UInt64) {
            assert(!armed, "the idle timer is armed once at a time")
            armed = true
            timespec.pointee = __kernel_timespec(tv_sec: Int64(nanoseconds / 1_000_000_000),
                                                 tv_nsec: Int64(nanoseconds % 1_000_000_000))
            relay.submitted()
            relay.loop.submit(self) { io_uring_prep_timeout($0, timespec, 0, 0) }
        }

        override func complete(result: Int32, flags: UInt32) {
            armed = false
            guard relay.completed() else { return }
            relay.idleCheck()
        }
    }
}

extension Duration {
    /// The duration in whole nanoseconds (negative durations count as 0), for comparisons
    /// with the loop's monotonic clock.
    public var nanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        return UInt64(max(0, seconds)) * 1_000_000_000 + UInt64(max(0, attoseconds / 1_000_000_000))
    }
}

extension EventLoop {
    /// Relays bytes between two connected sockets in both directions until both have sent
    /// FIN, one fails, or nothing has moved for `idleTimeout` (`halfClosedTimeout` once one
    /// side has finished). The descriptors stay open; the caller closes them.
    /// Must be called from a task running on this loop.
    public func relay(_ first: Int32, _ second: Int32, idleTimeout: Duration,
                      halfClosedTimeout: Duration? = nil, meter: RelayMeter? = nil) async -> RelayResult {
        let relay = SpliceRelay(loop: self, first, second, idleTimeout: idleTimeout, halfClosedTimeout: halfClosedTimeout,
                                meter: meter)
        return await relay.run()
    }

    /// Moves exactly `count` bytes from `source` to `destination` with splice (a message body
    /// of known length). Ends `.finished` when all arrived, `.endedEarly` when `source` sent
    /// FIN first, `.idleTimeout` when nothing moved for `idleTimeout`.
    public func transfer(from source: Int32, to destination: Int32, count: Int,
                         idleTimeout: Duration) async -> RelayResult {
        guard count > 0 else { return RelayResult(outcome: .finished, forwardBytes: 0, backwardBytes: 0) }
        let relay = SpliceRelay(loop: self, source, destination, limit: count, idleTimeout: idleTimeout, halfClosedTimeout: nil)
        return await relay.run()
    }
}
