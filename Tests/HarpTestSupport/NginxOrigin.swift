import Foundation
import Glibc
import Synchronization

/// A real nginx on a loopback port serving files from a temporary folder, started and
/// stopped by the test (`.ci/run` installs nginx). `/status` is nginx's stub_status, whose
/// "accepts" count tells how many connections harp opened to it.
public final class NginxOrigin: @unchecked Sendable {
    // @unchecked Sendable: immutable after init.
    public let port: UInt16
    public let root: String
    private let process = Process()
    private let statusQueries = Mutex<Int>(0)

    /// With `tls` (certificate and key files), nginx serves HTTPS on `port`.
    public init(files: [String: Int] = [:], tls: (cert: String, key: String)? = nil) throws {
        port = freePort()
        let prefix = NSTemporaryDirectory() + "harp-nginx-\(UUID().uuidString)"
        root = prefix + "/html"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: prefix + "/logs", withIntermediateDirectories: true)
        for (name, size) in files { try Self.writeRandomFile(root + "/" + name, size: size) }
        let config = """
            daemon off;
            master_process off;
            worker_processes 1;
            error_log \(prefix)/logs/error.log;
            pid \(prefix)/nginx.pid;
            events { worker_connections 1024; }
            http {
                access_log off;
                client_body_temp_path \(prefix)/body;
                proxy_temp_path \(prefix)/proxy;
                fastcgi_temp_path \(prefix)/fastcgi;
                uwsgi_temp_path \(prefix)/uwsgi;
                scgi_temp_path \(prefix)/scgi;
                keepalive_requests 100000;
                server {
                    listen 127.0.0.1:\(port)\(tls == nil ? "" : " ssl");
                    \(tls.map { "ssl_certificate \($0.cert); ssl_certificate_key \($0.key);" } ?? "")
                    root \(root);
                    location = /status { stub_status; }
                }
            }
            """
        try config.write(toFile: prefix + "/nginx.conf", atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/nginx")
        process.arguments = ["-p", prefix, "-c", prefix + "/nginx.conf"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Wait until it accepts connections.
        for _ in 0..<200 {
            if (try? TestSocket(connectingTo: loopback(port), timeoutSeconds: 1)) != nil { return }
            usleep(20_000)
        }
        throw TestFailure("nginx did not start on port \(port); see \(prefix)/logs/error.log")
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: root).deletingLastPathComponent().path)
    }

    /// Connections nginx has accepted so far (stub_status "accepts"), read directly.
    public func acceptedConnections() throws -> Int {
        let socket = try TestSocket(connectingTo: loopback(port))
        try socket.send(Array("GET /status HTTP/1.0\r\n\r\n".utf8))
        let text = String(decoding: try socket.receiveAll(), as: UTF8.self)
        // "...server accepts handled requests\n 12 12 40 \n..."
        let lines = text.split(separator: "\n")
        guard let index = lines.firstIndex(where: { $0.contains("accepts") }), index + 1 < lines.count,
              let accepts = lines[index + 1].split(separator: " ").first.flatMap({ Int($0) }) else {
            throw TestFailure("unexpected stub_status: \(text)")
        }
        // Leave out the connections these status queries made themselves.
        return accepts - statusQueries.withLock { $0 += 1; return $0 }
    }

    /// Writes `size` pseudo-random bytes (a random 1 MiB + 13 block repeated) quickly.
    public static func writeRandomFile(_ path: String, size: Int) throws {
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        var generator = SystemRandomNumberGenerator()
        let block = Data((0..<(1_048_576 + 13)).map { _ in UInt8.random(in: 0...255, using: &generator) })
        var written = 0
        while written < size {
            let count = min(block.count, size - written)
            try handle.write(contentsOf: block.prefix(count))
            written += count
        }
    }
}

/// Runs a shell command line and returns its standard output (trimmed) and exit status.
@discardableResult
public func shell(_ command: String) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/bash")
    process.arguments = ["-c", command]
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = FileHandle.nullDevice
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
}

/// Starts a shell command line without waiting for it (its output is discarded).
public func shellBackground(_ command: String) throws -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/bash")
    process.arguments = ["-c", command]
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    return process
}
