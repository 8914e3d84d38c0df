import ArgumentParser
import BlockExchange
import Foundation
import Glibc
import HarpKernel

/// `harp bench transfer`: what the swarm buys over one source. It makes a file, starts the
/// nodes on loopback itself (an origin and N peers that seed it, one downloader, each seeder's
/// upload capped at `--peer-rate`), and times (a) one download of the file over HTTP through
/// harp's proxy from an origin capped at the same rate — a Nextcloud WebDAV download — and
/// (b) the swarm download. Both write the file to disk and sync it; the swarm verifies every
/// chunk, the HTTP download hashes the whole.
/// The commands this target adds to harp's own.
public enum HarpBenchCommands {
    public static let all: [any ParsableCommand.Type] = [BenchCommand.self]
}

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench", abstract: "Benchmarks that start their own nodes on loopback.",
                                                    subcommands: [BenchTransfer.self])
}

struct BenchTransfer: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "transfer",
                                                    abstract: "Swarm download from an origin and N peers vs one HTTP source at the same cap.")

    @Option(help: "The file's size (e.g. 2GiB, 500MB).")
    var size: String = "1GiB"

    @Option(help: "Seeding peers besides the origin.")
    var peers: Int = 4

    @Option(name: .customLong("peer-rate"), help: "Each seeder's upload cap (e.g. 100MiB/s; 0 = none). The HTTP origin gets the same.")
    var peerRate: String = "0"

    @Option(help: "all: every seeder runs from the start; staggered: the download starts with the origin and one more peer joins every second.")
    var join: String = "all"

    @Option(help: "A directory for the nodes and files (default: a new one in $TMPDIR, removed after).")
    var dir: String?

    @Flag(help: "Print JSON.")
    var json = false

    func validate() throws {
        guard BenchUnits.bytes(size) != nil else { throw ValidationError("--size: expected a size such as 2GiB or 500MB") }
        guard BenchUnits.bytes(peerRate.replacingOccurrences(of: "/s", with: "")) != nil else {
            throw ValidationError("--peer-rate: expected a rate such as 100MiB/s, or 0")
        }
        guard (0...16).contains(peers) else { throw ValidationError("--peers: 0 to 16") }
        guard join == "all" || join == "staggered" else { throw ValidationError("--join: all or staggered") }
    }

    func run() throws {
        let bench = try TransferBench(size: BenchUnits.bytes(size)!, peers: peers,
                                      rate: BenchUnits.bytes(peerRate.replacingOccurrences(of: "/s", with: ""))!,
                                      staggered: join == "staggered", directory: dir, showProgress: isatty(2) == 1 && !json)
        defer { bench.cleanUp(keep: dir != nil) }
        let result = try bench.run()
        if json {
            let data = try JSONSerialization.data(withJSONObject: result.json, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            for line in result.lines { print(line) }
        }
    }
}

enum BenchUnits {
    /// "2GiB", "500MB", "100MiB", "4096" → bytes.
    static func bytes(_ text: String) -> Int? {
        let units: [(String, Double)] = [("TiB", 1_099_511_627_776), ("GiB", 1_073_741_824), ("MiB", 1_048_576), ("KiB", 1024),
                                         ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("kB", 1e3), ("B", 1)]
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            return Double(text.dropLast(suffix.count)).map { Int($0 * factor) }
        }
        return Int(text)
    }
}
