import Foundation
import Glibc
import Testing

/// The real `harp` binary, started with a config file on loopback ports.
public final class HarpProcess: @unchecked Sendable {
    // @unchecked Sendable: `output` is guarded by `lock`; the rest is set once in init.
    public let process = Process()
    private let lock = NSLock()
    private var stdoutText = ""
    private var stderrText = ""
    public let configPath: String?
    /// The output pipes, whose readability handlers are removed before they go: a handler
    /// left on a pipe that is freed can fire into freed memory in libdispatch (a test run
    /// crashed in `_dispatch_event_loop_drain` with many processes coming and going).
    private let pipes: [Pipe]
    /// A test that freezes a loop on purpose sets this; otherwise a stall of a second or more
    /// that harp logged fails the test that ran it (checked when harp exits or goes).
    public var allowStalls = false
    private var stallsChecked = false

    /// The built `harp` executable: `HARP_BINARY`, else next to the test bundle (SwiftPM
    /// puts products and the test runner in the same folder), else `.build/debug/harp`.
    public static var binary: String {
        if let path = ProcessInfo.processInfo.environment["HARP_BINARY"] { return path }
        let runner = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var directory = runner.deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = directory.appendingPathComponent("harp").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/harp").path
    }

    /// Starts `harp` with `arguments`; with `config`, writes it to a temporary file and adds
    /// `--config FILE`.
    public init(_ arguments: [String], config: String? = nil, environment: [String: String] = [:]) throws {
        var arguments = arguments
        if let config {
            let path = NSTemporaryDirectory() + "harp-test-\(UUID().uuidString).toml"
            try config.write(toFile: path, atomically: true, encoding: .utf8)
            arguments += ["--config", path]
            configPath = path
        } else {
            configPath = nil
        }
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        process.environment = env
        let out = Pipe(), err = Pipe()
        pipes = [out, err]
        process.standardOutput = out
        process.standardError = err
        out.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self, !data.isEmpty else { return }
            self.lock.withLock { self.stdoutText += String(decoding: data, as: UTF8.self) }
        }
        err.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self, !data.isEmpty else { return }
            self.lock.withLock { self.stderrText += String(decoding: data, as: UTF8.self) }
        }
        try process.run()
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        for pipe in pipes { pipe.fileHandleForReading.readabilityHandler = nil }
        checkStalls()
        if let configPath { try? FileManager.default.removeItem(atPath: configPath) }
    }

    public var pid: Int32 { process.processIdentifier }
    public var stdout: String { lock.withLock { stdoutText } }
    public var stderr: String { lock.withLock { stderrText } }

    /// Starts `harp serve` with `config` and waits until it prints that it is ready.
    public static func serve(_ config: String, extraArguments: [String] = [], environment: [String: String] = [:]) throws -> HarpProcess {
        let harp = try HarpProcess(["serve"] + extraArguments, config: config, environment: environment)
        try harp.waitForOutput("harp: ready")
        return harp
    }

    /// How many times `text` has appeared on stdout and stderr so far.
    public func occurrences(of text: String) -> Int {
        stdout.components(separatedBy: text).count - 1 + stderr.components(separatedBy: text).count - 1
    }

    /// Polls until `text` appears on stdout or stderr (`count` times in all: to wait for the
    /// next of a line that may already have been printed); throws if harp exits or time runs out.
    public func waitForOutput(_ text: String, count: Int = 1, timeout: Double = 20) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if occurrences(of: text) >= count { return }
            if !process.isRunning {
                usleep(50_000)
                if occurrences(of: text) >= count { return }
                throw TestFailure("harp exited (\(process.terminationStatus)) before printing \"\(text)\"; stderr: \(stderr)")
            }
            usleep(10_000)
        }
        throw TestFailure("harp did not print \"\(text)\" within \(timeout)s; stdout: \(stdout) stderr: \(stderr)")
    }

    /// Sends `signal` and waits for the process to exit; returns its exit status.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: Double = 20) throws -> Int32 {
        if process.isRunning { kill(pid, signal) }
        return try waitForExit(timeout: timeout)
    }

    public func waitForExit(timeout: Double = 20) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning {
            guard Date() < deadline else {
                kill(pid, SIGKILL)
                throw TestFailure("harp did not exit within \(timeout)s")
            }
            usleep(10_000)
        }
        usleep(50_000)  // let a handler that is running finish its append
        // Then take what is left in the pipes ourselves: under load the handlers can be
        // behind by more than that (a 40 KB JSON answer arrived cut short once).
        for (index, pipe) in pipes.enumerated() {
            pipe.fileHandleForReading.readabilityHandler = nil
            let rest = pipe.fileHandleForReading.readDataToEndOfFile()
            guard !rest.isEmpty else { continue }
            lock.withLock {
                if index == 0 { stdoutText += String(decoding: rest, as: UTF8.self) } else { stderrText += String(decoding: rest, as: UTF8.self) }
            }
        }
        checkStalls()
        return process.terminationStatus
    }

    /// The stall lines (`loop N stalled for X ms …`) of a second or more that harp logged.
    public var severeStalls: [String] {
        stderr.split(separator: "\n").map(String.init).filter { line in
            guard let range = line.range(of: #"loop \d+ stalled for \d+ ms"#, options: .regularExpression) else { return false }
            let milliseconds = line[range].split(separator: " ")[4]
            return Int(milliseconds).map { $0 >= 1000 } ?? false
        }
    }

    private func checkStalls() {
        guard !allowStalls, !stallsChecked else { return }
        stallsChecked = true
        for line in severeStalls { Issue.record("harp logged a stall of a second or more: \(line)") }
    }

    /// Open file descriptors of the harp process (from /proc/PID/fd).
    public var openFileCount: Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    /// Open sockets of the harp process. Pipes are left out: the loop keeps empty pipes for
    /// reuse, so their number depends on how many relays overlapped, not on leaks.
    public var openSocketCount: Int {
        let directory = "/proc/\(pid)/fd"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return entries.filter { ((try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\($0)")) ?? "").hasPrefix("socket:") }.count
    }

    /// Runs harp to completion (for commands like `plugins` or `config check`).
    public static func run(_ arguments: [String], config: String? = nil,
                           environment: [String: String] = [:]) throws -> (status: Int32, stdout: String, stderr: String) {
        let harp = try HarpProcess(arguments, config: config, environment: environment)
        let status = try harp.waitForExit()
        return (status, harp.stdout, harp.stderr)
    }
}

public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
