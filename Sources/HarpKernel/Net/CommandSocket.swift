import Foundation
import Glibc

/// A plugin's local command socket (mode 0600): the CLI (`harp storage …`, `harp exapps bans`)
/// sends one JSON request line and reads JSON lines back — progress, then a last line with
/// `"done": true` or an `"error"`. Whoever can open the socket can command the process, hence
/// the mode. `CommandClient` is the other end.
public final class CommandSocket: Sendable {
    public let path: String
    /// The configuration key that chose the path, for errors (`storage.dir`).
    private let key: String
    private let value: String
    /// What a live socket at `path` means, for the error ("another node is running on it").
    private let inUse: String

    public init(path: String, key: String, value: String, inUse: String) {
        self.path = path
        self.key = key
        self.value = value
        self.inUse = inUse
    }

    /// Binds the socket: a stale one (no process behind it) is replaced; a live one means
    /// another harp serves it, which is refused. `serve` gets each connection's request.
    public func listen(on listeners: ListenerSet, serve: @escaping @Sendable (CommandConnection) async -> Void) throws(ConfigError) {
        if access(path, F_OK) == 0 {
            if CommandClient.canConnect(path) {
                throw ConfigError.invalid(key: key, value: value, reason: "\(inUse) (\(path) answers)")
            }
            unlink(path)
        }
        do {
            _ = try listeners.listen(on: .unix(path: path), loopCount: 1) { socket in
                defer { socket.abort() }
                let reader = FramedReader(stream: socket, capacity: 64 * 1024)
                var decoder = LineDecoder()
                guard case .frame(let length, _, _) = await reader.next(&decoder, timeout: .seconds(10)) else { return }
                let line = Data(reader.buffer.readable[0..<length])
                let connection = CommandConnection(socket: socket)
                guard let request = (try? JSONSerialization.jsonObject(with: line)) as? [String: Any],
                      let command = request["cmd"] as? String else {
                    return await connection.send(["error": "not a JSON request"])
                }
                connection.command = command
                connection.request = request
                await serve(connection)
            }
        } catch {
            throw ConfigError.invalid(key: key, value: value, reason: "cannot listen on \(path): \(error)")
        }
        chmod(path, 0o600)
    }

    public func remove() { unlink(path) }
}

/// One request on a `CommandSocket`: the command, its fields, and the way back.
public final class CommandConnection: @unchecked Sendable {
    // @unchecked Sendable: used by the one task that serves the connection.
    public let socket: SocketStream
    public fileprivate(set) var command = ""
    /// The decoded request object (`cmd` included).
    public fileprivate(set) var request: [String: Any] = [:]

    init(socket: SocketStream) { self.socket = socket }

    /// The request's string and integer fields as text (for handlers that take `[String: String]`).
    public var fields: [String: String] {
        var fields: [String: String] = [:]
        for (key, value) in request {
            if let text = value as? String { fields[key] = text } else if let number = value as? Int { fields[key] = String(number) }
        }
        return fields
    }

    /// One JSON object as a line.
    public func send(_ object: [String: Any]) async {
        guard var data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        data.append(0x0A)
        _ = await socket.write([UInt8](data), timeout: .seconds(10))
    }

    /// A line already encoded (JSON text without the newline).
    public func send(line: String) async {
        _ = await socket.write(Array((line + "\n").utf8), timeout: .seconds(10))
    }

    public func send(bytes: [UInt8]) async {
        _ = await socket.write(bytes, timeout: .seconds(10))
    }
}

/// One newline-terminated line (without the newline) as a frame.
public struct LineDecoder: FrameDecoder {
    public init() {}

    public func decode(_ bytes: UnsafeRawBufferPointer) -> FrameDecision<Int, String> {
        guard let end = bytes.firstIndex(of: 0x0A) else { return .needMore }
        return .frame(end, headerLength: end + 1, payloadLength: 0)
    }
}
