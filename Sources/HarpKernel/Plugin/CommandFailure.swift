import Foundation
import Glibc

/// A plugin command that ran and failed (harp is not running, it refused, a file is missing):
/// one line on standard error and exit status 1 — not a usage error (64, with the usage after
/// a command that was well formed) — or, with `--json`, `{"error": …}` on standard output.
public struct CommandFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }

    /// Runs a command's body; a `CommandFailure` ends the process as described above.
    public static func reporting(json: Bool, _ body: () throws -> Void) throws {
        do {
            try body()
        } catch let failure as CommandFailure {
            if json {
                let data = (try? JSONSerialization.data(withJSONObject: ["error": failure.description], options: [.sortedKeys])) ?? Data()
                print(String(decoding: data, as: UTF8.self))
            } else {
                FileHandle.standardError.write(Data("harp: \(failure.description)\n".utf8))
            }
            Glibc.exit(1)
        }
    }

    /// A call on a `CommandSocket`; its failure becomes the command's one-line error.
    public static func calling(_ body: () throws -> [String: Any], finally: () -> Void = {}) throws -> [String: Any] {
        defer { finally() }
        do {
            return try body()
        } catch let failure as CommandClient.Failure {
            throw CommandFailure(failure.description)
        }
    }

    /// An answer as one JSON line (without its `done` marker).
    public static func printJSON(_ object: [String: Any]) {
        var clean = object
        clean["done"] = nil
        if let data = try? JSONSerialization.data(withJSONObject: clean, options: [.sortedKeys]) { print(String(decoding: data, as: UTF8.self)) }
    }
}
