import ArgumentParser
import Foundation
import Glibc
import HarpKernel

/// `harp storage …`: the P2P node's commands.
struct StorageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "storage", abstract: "The P2P storage node's commands.",
                                                    subcommands: [Init.self, ID.self, Chunk.self])

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a node identity (Ed25519 key and certificate) in DIR; print its node ID.")

        @Option(name: .long, help: "The node's state directory ([storage] dir).")
        var dir: String

        func run() throws {
            do {
                print(try NodeIdentity.create(in: dir))
            } catch {
                throw ValidationError(error.description)
            }
        }
    }

    struct ID: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "id", abstract: "Print the node ID of the identity in DIR.")

        @Option(name: .long, help: "The node's state directory ([storage] dir).")
        var dir: String

        func run() throws {
            do {
                print(try NodeIdentity.load(from: dir))
            } catch {
                throw ValidationError(error.description)
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

        func run() throws {
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
                throw ValidationError(error.description)
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
}
