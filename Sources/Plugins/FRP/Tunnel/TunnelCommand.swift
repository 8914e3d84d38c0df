import ArgumentParser
import CShims
import Dispatch
import Foundation
import Glibc
import HarpKernel
import Logging

/// `harp tunnel --config frpc.toml`: publish local services through an frps-compatible server
/// (harp's `frp` plugin or upstream frps) with frpc's own configuration file.
struct TunnelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tunnel",
        abstract: "Run an frpc-compatible tunnel client from frpc's TOML configuration.")

    @Option(name: .long, help: "frpc's TOML configuration file.")
    var config: String

    func run() throws {
        // A well-formed command whose file is wrong: one line, no usage.
        var configuration: TunnelConfiguration?
        try CommandFailure.reporting(json: false) {
            let text: String
            do {
                text = try String(contentsOfFile: config, encoding: .utf8)
            } catch {
                throw CommandFailure("cannot read \(config): \(error.localizedDescription)")
            }
            do {
                configuration = try TunnelConfiguration(toml: text, source: config)
            } catch {
                throw CommandFailure("\(error)")
            }
        }
        guard let configuration else { return }
        LoggingSystem.bootstrap { LogWriter.Handler(label: $0, level: configuration.logLevel) }
        let logger = Logger(label: "harp.tunnel")
        if !configuration.ignoredKeys.isEmpty {
            logger.warning("keys harp tunnel does not act on: \(configuration.ignoredKeys.joined(separator: ", "))")
        }
        let signals = harp_signalfd_for_shutdown()
        let loop = try EventLoop(index: 0)
        let client = try TunnelClient(configuration: configuration, loop: loop, logger: logger)
        let finished = DispatchSemaphore(value: 0)
        let status = ExitStatus()
        loop.spawn {
            status.code = await client.run()
            finished.signal()
        }
        // Until SIGINT/SIGTERM, or until the client gives up (loginFailExit).
        var pollFD = pollfd(fd: signals, events: Int16(POLLIN), revents: 0)
        while finished.wait(timeout: .now()) == .timedOut {
            if Glibc.poll(&pollFD, 1, 100) > 0 { break }
        }
        LogWriter.standardError.flush()
        Glibc.exit(status.code)
    }

    private final class ExitStatus: @unchecked Sendable {
        // @unchecked Sendable: written by the client task before it signals, read after.
        var code: Int32 = 0
    }
}
