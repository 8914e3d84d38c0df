import ArgumentParser
import Glibc

/// `harp frp …`: tools for the tunnel server.
struct FRPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "frp",
        abstract: "Tools for the frp tunnel server.",
        subcommands: [GenerateCertificates.self])

    /// `harp frp gen-certs --dir DIR`: the certificates HaRP's start script makes.
    struct GenerateCertificates: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "gen-certs",
            abstract: "Write a CA, a server certificate (harp.nc) and a client certificate (harp.client.nc) for mutual TLS.")

        @Option(name: .long, help: "Where to write ca.crt, server.crt/key and client.crt/key (created if missing).")
        var dir: String

        @Option(name: .long, help: "Validity in days.")
        var days: Int = 5000

        func validate() throws {
            guard (1...36_500).contains(days) else { throw ValidationError("--days must be 1 to 36500") }
        }

        func run() throws {
            do {
                try CertificateSet.generate(into: dir, days: days)
            } catch {
                throw ValidationError("\(error)")
            }
            print("wrote \(CertificateSet.files.map { dir + "/" + $0 }.joined(separator: ", "))")
        }
    }
}
