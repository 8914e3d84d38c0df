import Foundation
import Glibc

/// A one-line progress bar on a terminal: bytes, rate, peers, ETA.
public struct ProgressBar {
    private var drawn = false

    public init() {}

    public mutating func draw(bytes: Int, size: Int, rate: Int, peers: Int) {
        guard size > 0 else { return }
        let fraction = min(1, Double(bytes) / Double(size))
        let width = 30
        let filled = Int(fraction * Double(width))
        let eta = rate > 0 ? Self.duration(Double(size - bytes) / Double(rate)) : "--"
        let line = "\r[\(String(repeating: "#", count: filled))\(String(repeating: ".", count: width - filled))] "
            + "\(Self.bytes(bytes))/\(Self.bytes(size))  \(Self.bytes(rate))/s  \(peers) peer\(peers == 1 ? "" : "s")  ETA \(eta)  "
        Self.standardError(line)
        drawn = true
    }

    public func finish() {
        if drawn { Self.standardError("\n") }
    }

    private static func standardError(_ text: String) {
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }

    public static func bytes(_ count: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(count), unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(count) B" : String(format: "%.1f %@", value, units[unit])
    }

    static func duration(_ seconds: Double) -> String {
        let total = Int(seconds.rounded())
        return total >= 3600 ? "\(total / 3600)h\(total % 3600 / 60)m" : total >= 60 ? "\(total / 60)m\(total % 60)s" : "\(total)s"
    }
}
