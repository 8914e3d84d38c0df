import Glibc

/// Both directions between two streams, one task each on the loop: the copy path of a relay
/// (when a leg is TLS or multiplexed, so splice cannot see the plaintext) and the driver of
/// relays that look at what they move (a WebSocket frame inspector).
///
/// The pump keeps what both directions share: the idle clock (`halfClosedTimeout` takes over
/// once one direction is done), byte counts, and the outcome. A direction that returns without
/// the pump having ended has met end of stream: the pump passes it on with `finishWriting`.
/// `end` settles the outcome and aborts both streams, so the other direction's pending read
/// returns at once.
public final class Pump: @unchecked Sendable {
    // @unchecked Sendable: both direction tasks run on `loop`; state is touched only there.
    public let loop: EventLoop
    /// `streams[0]` is the first stream, `streams[1]` the second; side 0 moves first → second.
    public let streams: [any ByteStream]
    public let idleLimit: Duration
    public let halfClosedLimit: Duration
    private var lastActivity: UInt64
    private var finished = [false, false]
    /// Bytes moved: `[first → second, second → first]`.
    public private(set) var bytes = [0, 0]
    /// Set once by `end`; nil while both directions may go on.
    public private(set) var outcome: RelayResult.Outcome?

    private let meter: RelayMeter?
    /// Where the direction that finished first waits, keeping the half-closed limit.
    private lazy var halfClosedWait = LoopWait(loop: loop)

    public init(loop: EventLoop, _ first: any ByteStream, _ second: any ByteStream, idleTimeout: Duration,
                halfClosedTimeout: Duration?, meter: RelayMeter? = nil) {
        self.loop = loop
        self.meter = meter
        streams = [first, second]
        idleLimit = idleTimeout
        halfClosedLimit = min(halfClosedTimeout ?? idleTimeout, idleTimeout)
        lastActivity = loop.now
    }

    /// Runs `direction(0)` and `direction(1)` as child tasks on this loop until both return.
    public func run(_ direction: @escaping @Sendable (Int) async -> Void) async -> RelayResult {
        loop.assertInLoop()
        await withTaskGroup(of: Void.self) { group in
            for side in 0..<2 {
                group.addTask {
                    await direction(side)
                    await self.directionReturned(side)
                }
            }
        }
        return RelayResult(outcome: outcome ?? .finished, forwardBytes: bytes[0], backwardBytes: bytes[1])
    }

    private func directionReturned(_ side: Int) async {
        guard outcome == nil else { return }
        assert(!finished[side], "a direction ends once")
        finished[side] = true
        await streams[1 - side].finishWriting()
        if finished[1 - side] { return halfClosedWait.signal() }
        await keepHalfClosedLimit()
    }

    /// The other direction's read was armed with the idle limit before this one ended, so a
    /// shorter half-closed limit is kept here: the pump ends once nothing has moved for it.
    /// (Without this, a client that half-closed in front of a silent upstream held the relay
    /// for the whole idle limit: the pump test measured 30 s against a 300 ms limit.)
    private func keepHalfClosedLimit() async {
        guard halfClosedLimit < idleLimit else { return }
        while outcome == nil && !(finished[0] && finished[1]) {
            let limit = halfClosedLimit.nanoseconds
            if idleFor >= limit { return end(.idleTimeout) }
            _ = await halfClosedWait.wait(timeout: .nanoseconds(Int64(limit - idleFor)))
        }
    }

    /// True once either direction has met end of stream.
    public var isHalfClosed: Bool { finished[0] || finished[1] }

    /// How long a read may wait now: the idle limit, or the half-closed one.
    public var readLimit: Duration { isHalfClosed ? halfClosedLimit : idleLimit }

    /// Bytes moved on `side`: counts them and resets the idle clock.
    public func moved(_ count: Int, side: Int) {
        bytes[side] += count
        meter?(side, count)
        lastActivity = loop.now
    }

    /// Something arrived (not yet forwarded): resets the idle clock.
    public func touch() { lastActivity = loop.now }

    /// Nanoseconds since anything moved either way.
    public var idleFor: UInt64 { loop.now &- lastActivity }

    /// After a read timed out: ends the pump (`.idleTimeout`) and returns true when nothing
    /// has moved either way for the current limit; false when the other direction was busy.
    public func idleExpired() -> Bool {
        guard idleFor >= readLimit.nanoseconds else { return false }
        end(.idleTimeout)
        return true
    }

    /// Settles the outcome (the first one wins) and aborts both streams.
    public func end(_ reason: RelayResult.Outcome) {
        guard outcome == nil else { return }
        outcome = reason
        for stream in streams { stream.abort() }
        halfClosedWait.signal()
    }

    /// The plain copy direction: read what arrives, write it on, until end of stream.
    public func copy(_ side: Int) async {
        let source = streams[side], destination = streams[1 - side]
        let scratch = loop.copyBuffers.take()
        defer { loop.copyBuffers.give(scratch) }
        let buffer = BufferPool.copyRound(in: scratch, headroom: destination.writeHeadroom)
        while outcome == nil {
            let got = await source.read(into: buffer, timeout: readLimit)
            if got == 0 || outcome != nil { return }
            if got == -Int(ETIMEDOUT) {
                if idleExpired() { return }
                continue
            }
            if got < 0 { return end(.failed(side: side, errno: Int32(-got))) }
            touch()
            let sent = await destination.write(afterHeadroom: UnsafeRawBufferPointer(rebasing: buffer[0..<got]), timeout: idleLimit)
            if sent != 0 { return end(.failed(side: 1 - side, errno: -sent)) }
            moved(got, side: side)
        }
    }
}
