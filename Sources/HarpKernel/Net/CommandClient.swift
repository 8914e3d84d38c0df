import CShims
import Foundation
import Glibc

/// The CLI's side of a `CommandSocket`: plain blocking calls (a command is one short
/// process), one JSON request, JSON lines back.
public struct CommandClient {
    public let path: String
    /// What to tell the user when nothing answers (how to start what should be listening).
    private let notRunning: String

    public init(path: String, notRunning: String = "harp is not running") {
        self.path = path
        self.notRunning = notRunning
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        /// Nothing answers on the socket (a command may then read a stopped node's state).
        public var nodeNotRunning = false
    }

    /// Whether a process answers on the socket at `path`.
    public static func canConnect(_ path: String) -> Bool {
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
    /// process closes the connection; the last object is returned.
    public func call(_ request: [String: Any], line: ([String: Any]) -> Void = { _ in }) throws(Failure) -> [String: Any] {
        let fd: Int32
        do {
            fd = try Self.connect(path)
        } catch {
            throw Failure(description: "\(notRunning) (\(path): \(error.description))", nodeNotRunning: true)
        }
        defer { close(fd) }
        guard var data = try? JSONSerialization.data(withJSONObject: request) else { throw Failure(description: "cannot encode the request") }
        data.append(0x0A)
        let sent = data.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == data.count else { throw Failure(description: "cannot send the request: \(String(cString: strerror(errno)))") }
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
        guard !last.isEmpty else { throw Failure(description: "harp closed the connection without an answer") }
        if let error = last["error"] as? String { throw Failure(description: error) }
        return last
    }
}

