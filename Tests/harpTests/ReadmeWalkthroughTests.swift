import Foundation
import HarpTestSupport
import Testing

/// The README's P2P storage walkthrough, taken from the README itself (the block after the
/// `p2p-walkthrough` marker) and run as written by bash, twice in a row, with the harp under
/// test first on PATH: every claim its comments make is checked on its output.
@Suite("README: the P2P storage walkthrough runs as written", .serialized)
struct ReadmeWalkthroughTests {
    static let readme = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("README.md").path

    static func snippet() throws -> String {
        let text = try String(contentsOfFile: readme, encoding: .utf8)
        guard let marker = text.range(of: "<!-- p2p-walkthrough"),
              let open = text.range(of: "```sh\n", range: marker.upperBound..<text.endIndex),
              let close = text.range(of: "```", range: open.upperBound..<text.endIndex) else {
            throw TestFailure("README.md has no p2p-walkthrough block")
        }
        return String(text[open.upperBound..<close.lowerBound])
    }

    @Test("twice in a row: three versions on node 2 (the last concurrent), one notes.txt everywhere, every node stopped")
    func walkthrough() throws {
        let script = NSTemporaryDirectory() + "harp-walkthrough-\(UUID().uuidString.prefix(8)).sh"
        try Self.snippet().write(toFile: script, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: script) }
        let binaries = (HarpProcess.binary as NSString).deletingLastPathComponent
        for run in 1...2 {
            let result = try shell("PATH=\(binaries):$PATH timeout -s KILL 120 bash \(script); echo \"exit $?\"")
            let lines = result.output.split(separator: "\n").map(String.init)
            #expect(lines.last == "exit 0", "run \(run): \(result.output)")
            let history = lines.filter { $0.range(of: #"^\d+  \d+\.\d+  "#, options: .regularExpression) != nil }
            #expect(history.count == 3, "run \(run): \(result.output)")
            #expect(history.last?.hasSuffix("head concurrent") == true, "run \(run): \(history)")
            #expect(lines.dropLast().last == "edit on 3", "run \(run): \(result.output)")
            #expect(try shell("pgrep -f 'harp serve --config node[123].toml' || true").output.isEmpty, "run \(run): its nodes are stopped")
        }
    }
}
