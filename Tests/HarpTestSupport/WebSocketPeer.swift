import Foundation
import Glibc

/// The Python `websockets` peer (Tests/WebSocketTests/ws_peer.py): a real implementation for
/// the WebSocket tests and for ExApps serving WebSockets.
public enum WebSocketPeer {
    public static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("WebSocketTests/ws_peer.py").path

    /// The echo server on a free port.
    public final class EchoServer: @unchecked Sendable {
        // @unchecked Sendable: fixed after init; the process is only killed in deinit.
        public let port = freePort()
        let process = Process()

        public init() throws {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["python3", WebSocketPeer.script, "server", "\(port)"]
            let out = Pipe()
            process.standardOutput = out
            process.standardError = FileHandle.nullDevice  // it logs every connection harp cuts
            try process.run()
            let line = String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
            guard line.contains("ready") else { throw TestFailure("ws echo server did not start: \(line)") }
        }

        // SIGKILL: the child inherits a signal mask in which SIGTERM may be blocked.
        deinit { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
    }
}
