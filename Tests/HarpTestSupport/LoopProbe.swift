import Foundation
import Glibc
import HarpKernel

/// A peer process that holds a stall against harp (a reader that stops reading, an origin
/// that stops answering): `Tests/harpTests/stalled_peer.py` in one of its modes, started and
/// waited for until it prints "ready"; killed when this object goes.
public final class StalledPeer: @unchecked Sendable {
    // @unchecked Sendable: the process handle is only used by the test that made it.
    public let process = Process()

    public static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("harpTests/stalled_peer.py").path

    /// Starts `stalled_peer.py arguments…` (with the websockets package's Python when asked).
    public init(_ arguments: [String], timeout: Double = 20) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", Self.script] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        // The first line, read on a thread so that a peer that never says it is ready fails
        // the test instead of hanging it.
        let line = LineBox()
        let reader = Thread {
            let data = pipe.fileHandleForReading.availableData
            line.set(String(decoding: data, as: UTF8.self))
        }
        reader.start()
        _ = waitUntil(timeout: timeout, interval: 0.01) { line.get() != nil || !process.isRunning }
        guard line.get()?.contains("ready") == true else {
            stop()
            throw TestFailure("stalled_peer.py \(arguments.joined(separator: " ")) did not get ready")
        }
    }

    deinit { stop() }

    public func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    private final class LineBox: @unchecked Sendable {
        // @unchecked Sendable: guarded by `lock`.
        private let lock = NSLock()
        private var line: String?
        func set(_ text: String) { lock.withLock { line = text } }
        func get() -> String? { lock.withLock { line } }
    }
}

/// Proves that a loop still turns: `count` small requests to harp's admin endpoint
/// (`GET /healthz`), one after another, each on a new connection. Throws naming the slowest
/// when one fails or takes `limit` seconds or more — with one loop, any stall shows here.
@discardableResult
public func assertLoopTurns(adminPort: UInt16, count: Int = 20, limit: Double = 1) throws -> Double {
    var slowest = 0.0
    for index in 0..<count {
        let started = Date()
        let socket = try TestSocket(connectingTo: loopback(adminPort), timeoutSeconds: Int(limit.rounded(.up)) + 1)
        try socket.send(Array("GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".utf8))
        let reply = String(decoding: try socket.receiveAll(), as: UTF8.self)
        let seconds = Date().timeIntervalSince(started)
        slowest = max(slowest, seconds)
        guard reply.hasPrefix("HTTP/1.1 200") else {
            throw TestFailure("probe \(index + 1) of \(count) got no answer from harp's admin endpoint after \(seconds) s: \(reply.prefix(80))")
        }
        guard seconds < limit else {
            throw TestFailure("probe \(index + 1) of \(count) took \(seconds) s (limit \(limit) s): a loop is stalled")
        }
    }
    return slowest
}
