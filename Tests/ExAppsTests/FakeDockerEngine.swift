import Foundation
import HarpTestSupport
import Synchronization

/// A Docker Engine API on a Unix socket, as far as HaRP's container actions use it: containers
/// with a state, volumes, images, exec (answering `cat /etc/os-release`) and archive uploads,
/// every call recorded.
final class FakeDockerEngine: Sendable {
    struct Container: Sendable {
        var image: String
        var running = false
        var health: String?
        var body: String
    }

    final class Store: Sendable {
        let containers = Mutex<[String: Container]>([:])
        let volumes = Mutex<Set<String>>([])
        let images = Mutex<[String: Int]>(["ghcr.io/nextcloud/app:1.0": 1234])
        let archives = Mutex<[(container: String, tar: [UInt8])]>([])
        let calls = Mutex<[String]>([])
    }

    let store = Store()
    let server: TinyHTTPServer
    let socket: String

    init(socket: String) throws {
        self.socket = socket
        let store = self.store
        server = try TinyHTTPServer(unixPath: socket) { request in
            let path = request.path.removingPercentEncoding ?? request.path
            store.calls.withLock { $0.append("\(request.method) \(path)") }
            let parts = path.split(separator: "/").map(String.init)
            func json(_ status: Int, _ object: Any) -> TinyHTTPServer.Response {
                .init(status: status, headers: [("Content-Type", "application/json")], body: Array(try! JSONSerialization.data(withJSONObject: object)))
            }
            switch (request.method, parts.first, parts.count) {
            case ("GET", "containers", 3) where parts[2] == "json":
                guard let container = store.containers.withLock({ $0[parts[1]] }) else { return json(404, ["message": "No such container"]) }
                var state: [String: Any] = ["Status": container.running ? "running" : "exited", "Running": container.running]
                if let health = container.health { state["Health"] = ["Status": health] }
                return json(200, ["Config": ["Image": container.image], "State": state])
            case ("GET", "volumes", 2):
                return store.volumes.withLock { $0.contains(parts[1]) } ? json(200, ["Name": parts[1]]) : json(404, ["message": "no such volume"])
            case ("POST", "volumes", 2) where parts[1] == "create":
                let name = (try? JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any])?["Name"] as? String ?? ""
                store.volumes.withLock { _ = $0.insert(name) }
                return json(201, ["Name": name])
            case ("DELETE", "volumes", 2):
                return store.volumes.withLock { $0.remove(parts[1]) } != nil ? .init(status: 204) : json(404, ["message": "no such volume"])
            case ("POST", "containers", 2) where parts[1] == "create":
                let name = request.query("name") ?? ""
                let body = (try? JSONSerialization.jsonObject(with: Data(request.body))) as? [String: Any] ?? [:]
                let created = store.containers.withLock { containers -> Bool in
                    guard containers[name] == nil else { return false }
                    containers[name] = Container(image: body["Image"] as? String ?? "", body: String(decoding: request.body, as: UTF8.self))
                    return true
                }
                return created ? json(201, ["Id": "id-\(name)", "Warnings": []]) : json(409, ["message": "Conflict"])
            case ("POST", "containers", 3) where parts[2] == "start" || parts[2] == "stop":
                let start = parts[2] == "start"
                let status = store.containers.withLock { containers -> Int in
                    guard var container = containers[parts[1]] else { return 404 }
                    if container.running == start { return 304 }
                    container.running = start
                    containers[parts[1]] = container
                    return 204
                }
                return .init(status: status)
            case ("DELETE", "containers", 2):
                return store.containers.withLock { $0.removeValue(forKey: parts[1]) } != nil ? .init(status: 204) : json(404, ["message": "No such container"])
            case ("GET", "images", _) where parts.last == "json":
                let reference = parts.dropFirst().dropLast().joined(separator: "/")
                guard let size = store.images.withLock({ $0[reference] }) else { return json(404, ["message": "No such image"]) }
                return json(200, ["Size": size])
            case ("DELETE", "images", _):
                let reference = parts.dropFirst().joined(separator: "/")
                guard store.images.withLock({ $0.removeValue(forKey: reference) }) != nil else { return json(404, ["message": "No such image"]) }
                return json(200, [["Untagged": reference], ["Deleted": "sha256:abc"]])
            case ("POST", "containers", 3) where parts[2] == "exec":
                return json(201, ["Id": "exec-1"])
            case ("POST", "exec", 3) where parts[2] == "start":
                let text = Array("PRETTY_NAME=\"Debian GNU/Linux 12\"\nID=debian\n".utf8)
                let size = UInt32(text.count)
                let frame: [UInt8] = [1, 0, 0, 0, UInt8(size >> 24), UInt8(size >> 16 & 0xff), UInt8(size >> 8 & 0xff), UInt8(size & 0xff)] + text
                return .init(status: 200, headers: [("Content-Type", "application/vnd.docker.raw-stream")], body: frame)
            case ("GET", "exec", 3) where parts[2] == "json":
                return json(200, ["ExitCode": 0, "Running": false])
            case ("PUT", "containers", 3) where parts[2] == "archive":
                store.archives.withLock { $0.append((parts[1], request.body)) }
                return .init(status: 200)
            default:
                return json(404, ["message": "page not found"])
            }
        }
    }

    var calls: [String] { store.calls.withLock { $0 } }

    /// File names in the archives uploaded to `container`.
    func archivedFiles(_ container: String) -> [String] {
        store.archives.withLock { $0 }.filter { $0.container == container }.flatMap { archive -> [String] in
            var names: [String] = []
            var offset = 0
            let tar = archive.tar
            while offset + 512 <= tar.count, tar[offset] != 0 {
                let name = String(decoding: tar[offset..<offset + 100].prefix { $0 != 0 }, as: UTF8.self)
                let sizeText = String(decoding: tar[offset + 124..<offset + 135], as: UTF8.self)
                let size = Int(sizeText, radix: 8) ?? 0
                names.append(name)
                offset += 512 + (size + 511) / 512 * 512
            }
            return names
        }
    }

    func setHealth(_ container: String, _ health: String?) {
        store.containers.withLock { $0[container]?.health = health }
    }

    func stop() {
        server.stop()
        unlink(socket)
    }
}
