import Foundation
import Glibc
import HarpKernel

/// The CLI's side of the node's command socket: plain blocking calls (a command is one short
/// process), one JSON request, JSON lines back.
struct StorageClient {
    let path: String

    struct Failure: Error, CustomStringConvertible {
        let description: String
        /// No node answers on the socket (a command may then read the stopped node's state).
        var nodeNotRunning = false
    }

    /// Whether a node answers on the socket at `path`.
    static func canConnect(_ path: String) -> Bool {
        guard let fd = try? connect(path) else { return false }
        close(fd)
        return true
    }

    private static func connect(_ path: String) throws(Failure) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw Failure(description: "the socket path \(path) is too long")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw Failure(description: reason)
        }
        return fd
    }

    /// Sends `request` and calls `line` with each JSON object that comes back, until the
    /// node closes the connection; the last object is returned.
    func call(_ request: [String: Any], line: ([String: Any]) -> Void = { _ in }) throws(Failure) -> [String: Any] {
        let fd: Int32
        do {
            fd = try Self.connect(path)
        } catch {
            throw Failure(description: "the node is not running (\(path): \(error.description)); start it with `harp serve --config FILE`",
                          nodeNotRunning: true)
        }
        defer { close(fd) }
        guard var data = try? JSONSerialization.data(withJSONObject: request) else { throw Failure(description: "cannot encode the request") }
        data.append(0x0A)
        let sent = data.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == data.count else { throw Failure(description: "cannot send to the node: \(String(cString: strerror(errno)))") }
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        var last: [String: Any] = [:]
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            buffer += chunk[0..<count]
            while let end = buffer.firstIndex(of: 0x0A) {
                if let object = (try? JSONSerialization.jsonObject(with: Data(buffer[..<end]))) as? [String: Any] {
                    last = object
                    line(object)
                }
                buffer.removeSubrange(...end)
            }
        }
        guard !last.isEmpty else { throw Failure(description: "the node closed the connection without an answer") }
        if let error = last["error"] as? String { throw Failure(description: error) }
        return last
    }
}

/// A one-line progress bar on a terminal: bytes, rate, peers, ETA.
struct ProgressBar {
    private var drawn = false

    mutating func draw(bytes: Int, size: Int, rate: Int, peers: Int) {
        guard size > 0 else { return }
        let fraction = min(1, Double(bytes) / Double(size))
        let width = 30
        let filled = Int(fraction * Double(width))
        let eta = rate > 0 ? Self.duration(Double(size - bytes) / Double(rate)) : "--"
        let line = "\r[\(String(repeating: "#", count: filled))\(String(repeating: ".", count: width - filled))] "
            + "\(Self.bytes(bytes))/\(Self.bytes(size))  \(Self.bytes(rate))/s  \(peers) peer\(peers == 1 ? "" : "s")  ETA \(eta)  "
        Self.standardError(line)
        drawn = true
    }

    func finish() {
        if drawn { Self.standardError("\n") }
    }

    private static func standardError(_ text: String) {
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }

    static func bytes(_ count: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(count), unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(count) B" : String(format: "%.1f %@", value, units[unit])
    }

    static func duration(_ seconds: Double) -> String {
        let total = Int(seconds.rounded())
        return total >= 3600 ? "\(total / 3600)h\(total % 3600 / 60)m" : total >= 60 ? "\(total / 60)m\(total % 60)s" : "\(total)s"
    }
}
