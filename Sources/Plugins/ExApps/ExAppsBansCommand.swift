import ArgumentParser
import Foundation
import HarpKernel

/// `harp exapps bans`: the clients the running gateway bans, and `clear` to lift them —
/// through its command socket (`ExAppsControlSocket`), found from the same configuration
/// `harp serve` runs (the file or HaRP's variables).
struct ExAppsBansCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bans", abstract: "List the clients the running harp bans; lift bans.",
                                                    subcommands: [List.self, Clear.self], defaultSubcommand: List.self)

    struct Options: ParsableArguments {
        @Option(name: .long, help: "A TOML config file (default: HaRP's environment variables).")
        var config: String?

        @Flag(name: .long, help: "Print the answer as JSON.")
        var json = false

        func client() throws -> CommandClient {
            let exapps = try ExAppsCommand.configuration(path: config)
            return CommandClient(path: exapps.resolvedControlSocket(environment: ProcessEnvironment.current()),
                                 notRunning: "the gateway is not running (or runs with another configuration)")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List banned clients: failures, the last reason, when the ban ends.")
        @OptionGroup var options: Options

        func run() throws {
            try CommandFailure.reporting(json: options.json) {
                let client = try options.client()
                let answer = try CommandFailure.calling { try client.call(["cmd": "bans"]) }
                if options.json { return CommandFailure.printJSON(answer) }
                let bans = answer["bans"] as? [[String: Any]] ?? []
                if bans.isEmpty {
                    print("no client is banned (a client is banned after \(answer["ban_count"] ?? "?") failures within \(answer["ban_window_seconds"] ?? "?") s)")
                }
                for ban in bans {
                    print("\(ban["ip"] ?? "?")  \(ban["failures"] ?? 0) failures, last: \(ban["reason"] ?? "?"), ends in \(ban["ends_in_seconds"] ?? 0) s")
                }
            }
        }
    }

    struct Clear: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Lift the ban of one client, or of every client.")
        @OptionGroup var options: Options
        @Argument(help: "The client's IP address (default: every client).")
        var ip: String?

        func run() throws {
            try CommandFailure.reporting(json: options.json) {
                if let ip, IPRange.bytes(of: ip) == nil { throw CommandFailure("\(ip) is not an IP address") }
                let client = try options.client()
                var request: [String: Any] = ["cmd": "bans_clear"]
                request["ip"] = ip
                let answer = try CommandFailure.calling { try client.call(request) }
                if options.json { return CommandFailure.printJSON(answer) }
                let lifted = answer["lifted"] as? Int ?? 0
                print(lifted == 0 ? "no ban lifted\(ip.map { " (\($0) was not banned)" } ?? "")" : "\(lifted) ban\(lifted == 1 ? "" : "s") lifted")
            }
        }
    }
}
