import Foundation
import Glibc
import Synchronization

/// A tunnel client process: upstream frpc 0.65.0 (aarch64, from PyPI's `meiyoufrpclient`
/// wheel, run under qemu-user; `scripts/install-deps` puts it in place) — the real client
/// harp's FRP server must serve — or `harp tunnel`, with the same frpc TOML.
public final class FRPClient: @unchecked Sendable {
    public enum Kind: String, Sendable, CaseIterable, CustomStringConvertible {
        case frpc
        case harpTunnel = "harp tunnel"
        public var description: String { rawValue }
    }

    // @unchecked Sendable: the process handle is only read after start; output is locked.
    public let process = Process()
    private let output = LogText()
    public let configPath: String
    private let pipe: Pipe

    /// The frpc binary: `FRPC_BINARY`, else where install-deps unpacks it.
    public static var binary: String {
        ProcessInfo.processInfo.environment["FRPC_BINARY"] ?? "/opt/harp-test/frpc-0.65.0/frpc"
    }

    public static var isAvailable: Bool { FileManager.default.isExecutableFile(atPath: binary) }

    /// Starts `frpc -c` (or `harp tunnel --config`) with `config` (frpc's own TOML).
    public init(config: String, kind: Kind = .frpc) throws {
        configPath = NSTemporaryDirectory() + "frpc-\(UUID().uuidString).toml"
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        switch kind {
        case .frpc:
            process.executableURL = URL(fileURLWithPath: "/usr/bin/qemu-aarch64")
            process.arguments = [Self.binary, "-c", configPath]
        case .harpTunnel:
            process.executableURL = URL(fileURLWithPath: HarpProcess.binary)
            process.arguments = ["tunnel", "--config", configPath]
        }
        let pipe = Pipe()
        self.pipe = pipe
        process.standardOutput = pipe
        process.standardError = pipe
        let output = self.output
        pipe.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if !data.isEmpty { output.text.withLock { $0 += String(decoding: data, as: UTF8.self) } }
        }
        try process.run()
    }

    public var log: String { output.text.withLock { $0 } }

    /// frpc's output so far, appended by the pipe's handler thread.
    final class LogText: Sendable {
        let text = Mutex<String>("")
    }

    /// Waits until frpc's log contains `text` (or it exits, or `timeout` passes).
    @discardableResult
    public func waitForLog(_ text: String, timeout: Double = 30) -> Bool {
        _ = waitUntil(timeout: timeout) { log.contains(text) || !process.isRunning }
        return log.contains(text)
    }

    /// Waits until frpc exits; its status, or nil after `timeout`.
    public func waitForExit(timeout: Double = 30) -> Int32? {
        _ = waitUntil(timeout: timeout) { !process.isRunning }
        return process.isRunning ? nil : process.terminationStatus
    }

    public func kill(signal: Int32 = SIGKILL) {
        if process.isRunning { Glibc.kill(process.processIdentifier, signal) }
        process.waitUntilExit()
    }

    deinit {
        if process.isRunning {
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        pipe.fileHandleForReading.readabilityHandler = nil  // see HarpProcess.pipes
        try? FileManager.default.removeItem(atPath: configPath)
    }
}

/// Polls until a TCP connection to `port` on loopback succeeds (a proxy is listening).
public func waitForListener(port: UInt16, timeout: Double = 30) -> Bool {
    waitUntil(timeout: timeout, interval: 0.1) { (try? TestSocket(connectingTo: loopback(port), timeoutSeconds: 1)) != nil }
}

/// Whether process `pid` has a socket listening on TCP `port` (from /proc: unlike a connect,
/// not fooled by another test that picked the same free port after it was released).
public func isListening(pid: Int32, port: UInt16) -> Bool {
    var inodes: Set<String> = []
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = (try? String(contentsOfFile: table, encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ")
            // local_address is ADDR:PORT in hex, state 0A is LISTEN, the inode is field 9.
            guard fields.count > 9, fields[3] == "0A", let colon = fields[1].lastIndex(of: ":"),
                  UInt16(fields[1][fields[1].index(after: colon)...], radix: 16) == port else { continue }
            inodes.insert(String(fields[9]))
        }
    }
    guard !inodes.isEmpty, let descriptors = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd") else { return false }
    return descriptors.contains { fd in
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)") else { return false }
        return inodes.contains { target == "socket:[\($0)]" }
    }
}
