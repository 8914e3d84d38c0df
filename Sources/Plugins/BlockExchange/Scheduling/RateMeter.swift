import Foundation
import HarpKernel

/// Bytes per second, averaged with exponential decay over about a second: what a peer moves
/// now, for pipeline sizing and `harp storage status`.
public struct RateMeter: Sendable {
    private var rate: Double = 0
    private var at: UInt64 = 0
    static let window = 1.0

    public init() {}

    public mutating func add(_ bytes: Int, now: UInt64 = EventLoop.preciseNanos()) {
        rate = current(now: now) + Double(bytes) / Self.window
        at = now
    }

    public func current(now: UInt64 = EventLoop.preciseNanos()) -> Double {
        guard at != 0 else { return 0 }
        return rate * exp(-Double(now &- at) / 1e9 / Self.window)
    }
}
