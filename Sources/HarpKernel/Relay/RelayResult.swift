import Glibc

/// How a relay between two connections ended, and how many bytes moved each way.
public struct RelayResult: Sendable, CustomStringConvertible {
    public enum Outcome: Sendable, Equatable {
        /// Both directions reached end-of-stream and every byte was delivered.
        case finished
        /// Nothing moved for longer than the idle limit.
        case idleTimeout
        /// A syscall on one side failed (`side` 0 is the first descriptor, 1 the second).
        case failed(side: Int, errno: Int32)
        /// A bounded transfer's source reached end-of-stream before the byte count.
        case endedEarly(side: Int)
    }

    public var outcome: Outcome
    /// Bytes from the first descriptor to the second.
    public var forwardBytes: Int
    /// Bytes from the second descriptor to the first.
    public var backwardBytes: Int

    public init(outcome: Outcome, forwardBytes: Int, backwardBytes: Int) {
        self.outcome = outcome
        self.forwardBytes = forwardBytes
        self.backwardBytes = backwardBytes
    }

    public var description: String {
        switch outcome {
        case .finished: "finished"
        case .idleTimeout: "idle timeout"
        case .failed(let side, let errno): "side \(side): \(String(cString: strerror(errno)))"
        case .endedEarly(let side): "side \(side) ended early"
        }
    }
}

/// Told of bytes as a relay moves them (`side` 0: first → second), so a counter of a tunnel
/// that stays open for hours (a WebSocket, an frp work connection the gateway keeps alive)
/// moves while it runs instead of jumping when it ends. Called on the relay's loop, once per
/// splice or copy round (64 KiB or less): keep it to a counter increment.
public typealias RelayMeter = @Sendable (_ side: Int, _ bytes: Int) -> Void
