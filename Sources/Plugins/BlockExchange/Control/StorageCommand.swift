import ArgumentParser
import Foundation
import Glibc
import HarpKernel

/// `harp storage …`: the P2P node's commands.
struct StorageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "storage", abstract: "The P2P storage node's commands.",
                                                    subcommands: [Init.self, ID.self, Add.self, Get.self, Status.self, Ls.self, History.self, Restore.self, Log.self, Chunk.self])

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a node identity (Ed25519 key and certificate) in DIR; print its node ID.")

        @Option(name: .long, help: "The node's state directory ([storage] dir).")
        var dir: String

        func run() throws { try CommandFailure.reporting(json: false) { try perform() } }

        func perform() throws {
            do {
                print(try NodeIdentity.create(in: dir))
            } catch {
                throw CommandFailure(error.description)
            }
        }
    }

    struct ID: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "id", abstract: "Print the node ID of the identity in DIR.")

        @Option(name: .long, help: "The node's state directory ([storage] dir).")
        var dir: String

        func run() throws { try CommandFailure.reporting(json: false) { try perform() } }

        func perform() throws {
            do {
                print(try NodeIdentity.load(from: dir))
            } catch {
                throw CommandFailure(error.description)
            }
        }
    }

    /// Chunks a file the way the node does and reports it (what `bench/chunking.sh` times).
    struct Chunk: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cut a file into FastCDC chunks: its content root, chunk count and speed.")

        @Argument(help: "The file.")
        var path: String

        @Flag(name: .long, help: "Only find the cut points (no SHA-256): the chunker's own speed.")
        var noHash = false

        @Flag(name: .long, help: "Print JSON.")
        var json = false

        func run() throws { try CommandFailure.reporting(json: json) { try perform() } }

        func perform() throws {
            let started = DispatchTime.now().uptimeNanoseconds
            let result: (root: String, chunks: Int, size: Int)
            do {
                if noHash {
                    let (chunks, size) = try FileChunker.cutPoints(path: path)
                    result = ("", chunks, size)
                } else {
                    let (manifest, _) = try FileChunker.chunk(path: path)
                    result = (manifest.root.description, manifest.entries.count, manifest.size)
                }
            } catch {
                throw CommandFailure(error.description)
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
            let rate = Double(result.size) / seconds
            if json {
                print(#"{"root":"\#(result.root)","chunks":\#(result.chunks),"size_bytes":\#(result.size),"seconds":\#(seconds),"bytes_per_s":\#(Int(rate))}"#)
            } else {
                print("\(result.root.isEmpty ? "(no hash)" : result.root)  \(result.chunks) chunks, \(result.size) bytes, \(String(format: "%.2f", rate / 1e9)) GB/s")
            }
        }
    }

    /// Options of the commands that talk to a running node.
    struct NodeOptions: ParsableArguments {
        @Option(name: .long, help: "The node's TOML config file (as given to `harp serve`).")
        var config: String?

        @Flag(name: .long, help: "Print JSON.")
        var json = false

        /// The client for the node this config describes.
        func client() throws -> CommandClient {
            ControlSocket.client(dir: try stateDirectory())
        }

        /// The node's `[storage] dir`.
        func stateDirectory() throws -> String {
            do {
                let file = try ConfigFile.resolve(path: config, registry: PluginRegistry.executable, environment: ProcessEnvironment.current(),
                                                  fallback: nil)
                return try file.configuration(of: BlockExchangePlugin.self).dir
            } catch {
                throw CommandFailure("\(error)")
            }
        }

        /// The answer to `request` from the running node, or, when none runs, read from its
        /// state directory by the plugin that registered the command (`StoppedNodeCommands`).
        func ask(_ request: [String: String]) throws -> [String: Any] {
            let client = try client()
            do {
                return try client.call(request)
            } catch let failure {
                guard failure.nodeNotRunning, let name = request["cmd"], let handler = StoppedNodeCommands.handler(name) else {
                    throw CommandFailure(failure.description)
                }
                let text = handler(try stateDirectory(), request)
                guard let answer = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] else {
                    throw CommandFailure("the stopped node's answer is not JSON: \(text)")
                }
                if let error = answer["error"] as? String { throw CommandFailure(error) }
                return answer
            }
        }
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the content root of a file in the node's folder (indexing it if needed).",
            discussion: "This adds nothing to sync: every file in the folder is synced already (with the crdt plugin). The root is what `harp storage get ROOT` on another node fetches.")

        @Argument(help: "The file (inside [storage] folder; absolute, or relative to the folder).")
        var path: String

        @OptionGroup var options: NodeOptions

        func run() throws { try CommandFailure.reporting(json: options.json) { try perform() } }

        func perform() throws {
            let client = try options.client()
            let absolute = path.hasPrefix("/") || !FileManager.default.fileExists(atPath: path) ? path
                : FileManager.default.currentDirectoryPath + "/" + path
            let answer = try CommandFailure.calling { try client.call(["cmd": "add", "path": absolute]) }
            if options.json { return CommandFailure.printJSON(answer) }
            print("\(answer["root"] as? String ?? "")  \(answer["path"] as? String ?? "")  \(answer["size"] as? Int ?? 0) bytes")
        }
    }

    struct Get: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fetch content by its root from every connected peer that has it; verify it and move it into place.")

        @Argument(help: "The content root (64 hex digits).")
        var root: String

        @Option(name: .long, help: "Where to put the file.")
        var out: String

        @OptionGroup var options: NodeOptions

        func run() throws { try CommandFailure.reporting(json: options.json) { try perform() } }

        func perform() throws {
            let client = try options.client()
            let output = out.hasPrefix("/") ? out : FileManager.default.currentDirectoryPath + "/" + out
            var bar = ProgressBar()
            let terminal = isatty(2) == 1 && !options.json
            let answer = try CommandFailure.calling {
                try client.call(["cmd": "get", "root": root, "out": output]) { line in
                    guard terminal, line["event"] as? String == "progress" else { return }
                    bar.draw(bytes: line["bytes"] as? Int ?? 0, size: line["size"] as? Int ?? 0, rate: line["rate"] as? Int ?? 0,
                             peers: line["peers"] as? Int ?? 0)
                }
            } finally: { bar.finish() }
            if options.json { return CommandFailure.printJSON(answer) }
            let size = answer["size"] as? Int ?? 0, seconds = answer["seconds"] as? Double ?? 0
            let peers = (answer["bytes_by_peer"] as? [String: Int] ?? [:]).count
            print("\(output): \(ProgressBar.bytes(size)) in \(String(format: "%.2f", seconds)) s from \(peers) peer\(peers == 1 ? "" : "s")")
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The node's peers (rates, chunks served and received) and downloads.")

        @OptionGroup var options: NodeOptions

        func run() throws { try CommandFailure.reporting(json: options.json) { try perform() } }

        func perform() throws {
            let client = try options.client()
            let answer = try CommandFailure.calling { try client.call(["cmd": "status"]) }
            if options.json { return CommandFailure.printJSON(answer) }
            print("node \(answer["node"] as? String ?? "?")  folder \(answer["folder"] as? String ?? "?")  "
                  + "\(answer["files"] as? Int ?? 0) files, \(answer["chunks"] as? Int ?? 0) chunks")
            for peer in answer["peers"] as? [[String: Any]] ?? [] {
                func number(_ key: String) -> Int { peer[key] as? Int ?? 0 }
                let id = peer["id"] as? String ?? "?", address = peer["address"] as? String ?? "?"
                let state = peer["connected"] as? Bool == true ? "connected" : "not connected"
                let up = "up \(ProgressBar.bytes(number("send_rate")))/s (\(number("chunks_sent")) chunks)"
                let down = "down \(ProgressBar.bytes(number("receive_rate")))/s (\(number("chunks_received")) chunks)"
                let bad = number("bad_chunks") > 0 ? "  \(number("bad_chunks")) bad" : ""
                print("  peer \(id) at \(address): \(state)  \(up)  \(down)\(bad)")
            }
            for transfer in answer["transfers"] as? [[String: Any]] ?? [] {
                func number(_ key: String) -> Int { transfer[key] as? Int ?? 0 }
                let root = transfer["root"] as? String ?? "?", out = transfer["out"] as? String ?? "?"
                print("  fetching \(root) into \(out): \(ProgressBar.bytes(number("bytes"))) of \(ProgressBar.bytes(number("size"))) from \(number("peers")) peers")
            }
            if let content = answer["content"] as? [String: Any] {
                func number(_ key: String) -> Int { content[key] as? Int ?? 0 }
                let rate = content["files_per_second"] as? Double ?? 0, byteRate = content["bytes_per_second"] as? Double ?? 0
                print("content: \(number("pending_files")) files to fetch (\(ProgressBar.bytes(number("pending_bytes")))), "
                      + "\(number("in_flight")) downloading, \(number("failed")) waiting after a failed fetch; "
                      + "\((rate * 10).rounded() / 10) files/s, \(ProgressBar.bytes(Int(byteRate)))/s over the last 10 s")
                for failure in content["failures"] as? [[String: Any]] ?? [] {
                    print("  \(failure["path"] as? String ?? "?"): \(failure["reason"] as? String ?? "?") (again in \(Int(failure["retry_in_seconds"] as? Double ?? 0)) s)")
                }
            }
            if let store = answer["version_store"] as? [String: Any] {
                func bytes(_ key: String) -> String { ProgressBar.bytes(store[key] as? Int ?? 0) }
                print("version store: \(store["files"] as? Int ?? 0) versions, \(bytes("bytes")); removed since start: "
                      + "\(store["pruned_files"] as? Int ?? 0), \(bytes("pruned_bytes")) (keeps \(store["keep_versions"] as? Int ?? 0) per file, "
                      + "\(store["keep_versions_for"] as? String ?? "?"), within \(store["version_store_max"] as? String ?? "?"))")
            }
            let conflicts = answer["conflicts"] as? [[String: Any]] ?? []
            if !conflicts.isEmpty { print("conflicts in the last 7 days (newest first; harp storage history PATH shows both sides):") }
            for conflict in conflicts {
                let path = conflict["path"] as? String ?? "?", won = (conflict["won"] as? String ?? "?").prefix(9)
                let lost = (conflict["lost"] as? String ?? "?").prefix(9)
                let when = Date(timeIntervalSince1970: Double(conflict["time_ms"] as? Int ?? 0) / 1000).formatted(.iso8601)
                switch conflict["kind"] as? String {
                case "concurrent_edit": print("  \(when)  \(path): edited on \(won) and on \(lost) at once; \(won)'s edit is the file, the other is in its history")
                case "delete_overruled": print("  \(when)  \(path): deleted on \(lost), kept by a later change on \(won)")
                default: print("  \(when)  \(path): an edit on \(lost) was deleted moments later on \(won); restore it from the history")
                }
            }
        }
    }

    // The metadata commands: answered by the `crdt` plugin through the node's socket.

    struct Ls: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a folder path as the replicated tree shows it (P2P storage mode).")

        @Argument(help: "A directory in the folder (default: its top).")
        var path: String = ""

        @Flag(help: "List what was deleted from the directory (`history` and `restore` take those paths).")
        var deleted = false

        @OptionGroup var options: NodeOptions

        func run() throws { try CommandFailure.reporting(json: options.json) { try perform() } }

        func perform() throws {
            let answer = try options.ask(["cmd": "ls", "path": path, "deleted": deleted ? "1" : "0"])
            if options.json { return CommandFailure.printJSON(answer) }
            for entry in answer["entries"] as? [[String: Any]] ?? [] {
                let name = entry["name"] as? String ?? "?", type = entry["type"] as? String ?? "?"
                print(type == "dir" ? "\(name)/" : "\(name)  \(entry["size"] as? Int ?? 0) bytes  \(entry["root"] as? String ?? "")")
            }
        }
    }

    struct History: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A file's versions, oldest first: node, size, root, concurrent, head.")

        @Argument(help: "A file in the folder.")
        var path: String

        @OptionGroup var options: NodeOptions

        func run() throws { try CommandFailure.reporting(json: options.json) { try perform() } }

        func perform() throws {
            let answer = try options.ask(["cmd": "history", "path": path])
            if options.json { return CommandFailure.printJSON(answer) }
            for version in answer["versions"] as? [[String: Any]] ?? [] {
                let flags = [(version["head"] as? Bool == true) ? "head" : nil, (version["concurrent"] as? Bool == true) ? "concurrent" : nil]
                print("\(version["n"] as? Int ?? 0)  \(version["timestamp"] as? String ?? "")  \(version["node"] as? String ?? "")  "
                      + "\(version["size"] as? Int ?? 0) bytes  \(version["root"] as? String ?? "")  \(flags.compactMap { $0 }.joined(separator: " "))")
            }
        }
    }

    struct Restore: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make an old version of a file its newest (the history only grows).")

        @Argument(help: "A file in the folder.")
        var path: String

        @Option(help: "The version number, as `history` shows it.")
        var version: Int

        @OptionGroup var options: NodeOptions

        func run() throws { try CommandFailure.reporting(json: options.json) { try perform() } }

        func perform() throws {
            let client = try options.client()
            let answer = try CommandFailure.calling { try client.call(["cmd": "restore", "path": path, "version": version]) }
            if options.json { return CommandFailure.printJSON(answer) }
            print("\(path): version \(version) is the newest again")
        }
    }

    struct Log: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The most recent metadata operations.")

        @Option(help: "How many.")
        var count: Int = 50

        @OptionGroup var options: NodeOptions

        func run() throws { try CommandFailure.reporting(json: options.json) { try perform() } }

        func perform() throws {
            let answer = try options.ask(["cmd": "log", "count": "\(count)"])
            if options.json { return CommandFailure.printJSON(answer) }
            for operation in answer["operations"] as? [[String: Any]] ?? [] {
                let detail = operation["op"] as? String == "version" ? "\(operation["root"] as? String ?? "")" : "\(operation["name"] as? String ?? "") in \(operation["parent"] as? String ?? "")"
                print("\(operation["timestamp"] as? String ?? "")  \(operation["op"] as? String ?? "")  \(operation["item"] as? String ?? "")  \(detail)")
            }
        }
    }
}
