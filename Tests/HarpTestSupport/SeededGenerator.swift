import Foundation

/// A small deterministic generator (SplitMix64) so randomized tests repeat exactly from the
/// seed they print.
public struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension SeededGenerator {
    /// The seed for a randomized test: `HARP_RANDOM_SEED` when set, else a fresh one. Printed
    /// with the variable that repeats it, so a failure found by chance can be run again.
    public static func seed(for test: String) -> UInt64 {
        let seed = ProcessInfo.processInfo.environment["HARP_RANDOM_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 1...UInt64(UInt32.max))
        print("\(test): seed \(seed) (HARP_RANDOM_SEED=\(seed) repeats it)")
        return seed
    }
}
