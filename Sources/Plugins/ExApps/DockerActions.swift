import Foundation
import HTTPProxy
import HarpKernel

/// HaRP's `/docker/exapp/<action>`: container actions AppAPI asks of a deploy daemon whose
/// Docker Engine is published through FRP (its frpc on 127.0.0.1:<docker-engine-port>).
/// Request bodies, Engine calls and replies are those of HaRP's agent
/// (docs/protocols/exapps.md): AppAPI checks the statuses and fields.
struct DockerActions: Sendable {
    let client: HTTPClient
    /// HaRP's FRP certificate directory (CA and client pair for `install_certificates`).
    let certificateDirectory: String?

    static let actions: Set<String> = ["exists", "create", "start", "stop", "wait_for_start", "remove", "image_remove", "install_certificates"]

    /// A reply the way HaRP's agent (aiohttp) makes them.
    static func text(_ status: Int, _ text: String) -> Reply { Reply(status: status, body: Array(text.utf8)) }
    static func json(_ status: Int, _ object: [String: Any]) -> Reply {
        Reply(status: status, body: ControlPlane.jsonBytes(object), contentType: "application/json; charset=utf-8")
    }

    /// The Engine failed in a way the action cannot go on from: the reply says so.
    struct Failure: Error {
        let reply: Reply
    }

    func run(_ action: String, port portText: String?, body: [UInt8], on loop: EventLoop) async -> Reply {
        guard let portText else { return Self.text(400, "Missing 'docker-engine-port' header.") }
        guard let port = UInt16(portText), port > 0 else { return Self.text(400, "Invalid 'docker-engine-port' header value: \(portText)") }
        guard let payload = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] else {
            return Self.text(400, "Invalid JSON body")
        }
        guard let name = payload["name"] as? String, !name.isEmpty else {
            return Self.text(400, "Payload validation error: name: a non-empty string is required")
        }
        let engine = Engine(client: client, upstream: Upstream(address: .ipv4(host: UInt32(0x7f000001).bigEndian, port: port)), port: port, loop: loop)
        let instance = payload["instance_id"] as? String ?? ""
        let role = payload["role_suffix"] as? String ?? ""
        // They become Engine URL paths: Docker's own name characters only.
        for (field, value) in [("name", name), ("instance_id", instance), ("role_suffix", role)]
        where !value.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) }) {
            return Self.text(400, "Payload validation error: \(field): only letters, digits, '_', '.' and '-'")
        }
        let base = instance.isEmpty ? name : "\(instance)_\(name)"
        let container = "nc_app_" + base + (role.isEmpty ? "" : "_\(role)")
        let volume = "nc_app_\(base)_data"
        do {
            switch action {
            case "exists": return try await exists(engine, container)
            case "create": return try await create(engine, payload, name: name, container: container, volume: volume)
            case "start": return try await startOrStop(engine, container, start: true)
            case "stop": return try await startOrStop(engine, container, start: false)
            case "wait_for_start": return try await waitForStart(engine, container)
            case "remove": return try await remove(engine, container, volume: volume, data: payload["remove_data"] as? Bool ?? false)
            case "image_remove":
                guard let reference = payload["image_ref"] as? String, !reference.isEmpty else {
                    return Self.text(400, "Payload validation error: image_ref: a non-empty string is required")
                }
                return try await imageRemove(engine, reference)
            case "install_certificates":
                return try await installCertificates(engine, container, bundle: payload["system_certs_bundle"] as? String,
                                                     frp: payload["install_frp_certs"] as? Bool ?? true)
            default: return Self.text(404, "404: Not Found")
            }
        } catch let failure as Failure {
            return failure.reply
        } catch {
            return Self.text(500, "500: Internal Server Error")
        }
    }

    // MARK: Actions

    private func exists(_ engine: Engine, _ container: String) async throws -> Reply {
        let response = try await engine.call("GET", "/containers/\(container)/json")
        switch response.status {
        case 200:
            let object = Engine.object(response.body)
            let image = (object["Config"] as? [String: Any])?["Image"] as? String ?? object["Image"] as? String ?? ""
            return Self.json(200, ["exists": true, "image_ref": image])
        case 404: return Self.json(200, ["exists": false])
        default: throw Failure(reply: Self.text(503, "Error communicating with Docker Engine: Status \(response.status)"))
        }
    }

    private func create(_ engine: Engine, _ payload: [String: Any], name: String, container: String, volume: String) async throws -> Reply {
        guard let image = payload["image_id"] as? String ?? payload["image"] as? String, !image.isEmpty else {
            return Self.text(400, "Payload validation error: image_id: a non-empty string is required")
        }
        let inspected = try await engine.call("GET", "/volumes/\(volume)")
        if inspected.status == 404 {
            let made = try await engine.call("POST", "/volumes/create", json: ["Name": volume])
            guard made.status == 201 else { throw Failure(reply: Self.text(503, "Failed to create volume '\(volume)': Status \(made.status)")) }
        } else if inspected.status != 200 {
            throw Failure(reply: Self.text(503, "Error inspecting volume '\(volume)': Status \(inspected.status)"))
        }
        let network = payload["network_mode"] as? String ?? "bridge"
        var mounts: [[String: Any]] = [["Type": "volume", "Source": volume, "Target": "/" + volume, "ReadOnly": false]]
        for mount in payload["mount_points"] as? [[String: Any]] ?? [] {
            guard let source = mount["source"] as? String, let target = mount["target"] as? String else { continue }
            mounts.append(["Source": source, "Target": target, "Type": "bind", "ReadOnly": (mount["mode"] as? String) == "ro"])
        }
        var host: [String: Any] = ["NetworkMode": network, "Mounts": mounts,
                                   "RestartPolicy": ["Name": payload["restart_policy"] as? String ?? "unless-stopped"]]
        switch payload["compute_device"] as? String {
        case "cuda": host["DeviceRequests"] = [["Driver": "nvidia", "Count": -1, "Capabilities": [["compute", "utility"]]]]
        case "rocm":
            host["Devices"] = ["/dev/kfd", "/dev/dri"].map { ["PathOnHost": $0, "PathInContainer": $0, "CgroupPermissions": "rwm"] }
        default: break
        }
        if let limits = payload["resource_limits"] as? [String: Any] {
            if let memory = limits["memory"] as? Int { host["Memory"] = memory }
            if let cpus = limits["nanoCPUs"] as? Int { host["NanoCPUs"] = cpus }
        }
        var body: [String: Any] = ["Image": image, "Hostname": name, "HostConfig": host,
                                   "Env": payload["environment_variables"] as? [String] ?? []]
        if network != "host" && network != "bridge" {
            body["NetworkingConfig"] = ["EndpointsConfig": [network: ["Aliases": [name]]]]
        }
        let created = try await engine.call("POST", "/containers/create?name=\(PercentEncoding.encode(container))", json: body)
        switch created.status {
        case 201: return Self.json(201, ["id": Engine.object(created.body)["Id"] as? String ?? "", "name": container])
        case 409: return Self.text(409, "Container with name '\(container)' already exists.")
        default: throw Failure(reply: Self.text(503, "Error creating container '\(container)': Status \(created.status)"))
        }
    }

    private func startOrStop(_ engine: Engine, _ container: String, start: Bool) async throws -> Reply {
        let response = try await engine.call("POST", "/containers/\(container)/\(start ? "start" : "stop")")
        switch response.status {
        case 204: return Reply(status: 204, body: [])
        case 304: return Self.text(200, start ? "Container already started" : "Container already stopped")
        case 404: return Self.text(404, "Container '\(container)' not found.")
        default: throw Failure(reply: Self.text(503, "Error communicating with Docker Engine: Status \(response.status)"))
        }
    }

    /// Polls the container's state every 0.5 s, 180 times at most (HaRP's agent).
    private func waitForStart(_ engine: Engine, _ container: String) async throws -> Reply {
        let timer = AsyncCompletion()
        for _ in 0..<180 {
            let response = try await engine.call("GET", "/containers/\(container)/json")
            if response.status == 404 {
                return Self.json(200, ["started": false, "status": "not_found", "reason": "container not found"])
            }
            guard response.status == 200 else {
                throw Failure(reply: Self.text(503, "Error communicating with Docker Engine: Status \(response.status)"))
            }
            let state = Engine.object(response.body)["State"] as? [String: Any] ?? [:]
            let status = state["Status"] as? String ?? ""
            let health: Any = (state["Health"] as? [String: Any])?["Status"] as? String ?? NSNull()
            if status == "running" {
                if health is NSNull || (health as? String) == "healthy" {
                    return Self.json(200, ["started": true, "status": status, "health": health])
                }
                if (health as? String) == "unhealthy" {
                    return Self.json(200, ["started": true, "status": status, "health": health, "reason": "unhealthy"])
                }
            } else if ["paused", "exited", "dead"].contains(status) {
                return Self.json(200, ["started": false, "status": status, "health": health, "reason": "non-recoverable state: \(status)"])
            }
            _ = await engine.loop.sleep(for: .milliseconds(500), using: timer)
        }
        return Self.json(200, ["started": false, "status": "unknown", "reason": "timeout after max tries"])
    }

    private func remove(_ engine: Engine, _ container: String, volume: String, data: Bool) async throws -> Reply {
        let removed = try await engine.call("DELETE", "/containers/\(container)?force=true")
        guard [204, 404, 409].contains(removed.status) else {
            throw Failure(reply: Self.text(503, "Error removing container '\(container)': Status \(removed.status)"))
        }
        if data {
            let dropped = try await engine.call("DELETE", "/volumes/\(volume)")
            if dropped.status == 409 { return Self.text(409, "Volume '\(volume)' is in use and could not be removed.") }
            guard [204, 404].contains(dropped.status) else {
                throw Failure(reply: Self.text(503, "Error removing volume '\(volume)': Status \(dropped.status)"))
            }
        }
        return Reply(status: 204, body: [])
    }

    private func imageRemove(_ engine: Engine, _ reference: String) async throws -> Reply {
        let encoded = PercentEncoding.encode(reference)
        let inspected = try await engine.call("GET", "/images/\(encoded)/json")
        if inspected.status == 404 { return Self.json(200, ["deleted": true, "bytes_freed": 0, "reason": "not_found"]) }
        let size = Engine.object(inspected.body)["Size"] as? Int ?? 0
        let deleted = try await engine.call("DELETE", "/images/\(encoded)")
        switch deleted.status {
        case 200:
            let operations = (try? JSONSerialization.jsonObject(with: Data(deleted.body))) as? [[String: Any]] ?? []
            return Self.json(200, ["deleted": true, "bytes_freed": operations.contains { $0["Deleted"] != nil } ? size : 0])
        case 404: return Self.json(200, ["deleted": true, "bytes_freed": 0, "reason": "not_found"])
        case 409: return Self.json(200, ["deleted": false, "reason": "in_use"])
        default: throw Failure(reply: Self.text(503, "Error removing image '\(reference)': Status \(deleted.status)"))
        }
    }

    /// Puts Nextcloud's CA bundle into the container's trust store and HaRP's FRP CA and
    /// client pair into /certs/frp (so the ExApp's frpc can log in with mutual TLS). A
    /// stopped container is started for it and stopped again.
    private func installCertificates(_ engine: Engine, _ container: String, bundle: String?, frp: Bool) async throws -> Reply {
        let inspected = try await engine.call("GET", "/containers/\(container)/json")
        if inspected.status == 404 { return Self.text(404, "Container '\(container)' not found.") }
        guard inspected.status == 200 else {
            throw Failure(reply: Self.text(503, "Error communicating with Docker Engine: Status \(inspected.status)"))
        }
        let running = ((Engine.object(inspected.body)["State"] as? [String: Any])?["Running"] as? Bool) ?? false
        if !running {
            let started = try await engine.call("POST", "/containers/\(container)/start")
            guard [204, 304].contains(started.status) else {
                throw Failure(reply: Self.text(503, "Error starting container '\(container)': Status \(started.status)"))
            }
        }
        if let bundle, !bundle.isEmpty {
            let release = try await engine.exec(container, ["cat", "/etc/os-release"]).output
            let redHat = ["centos", "almalinux", "rhel", "fedora", "rocky"].contains { release.lowercased().contains("id=\($0)") || release.lowercased().contains("id=\"\($0)\"") }
            let directory = redHat ? "etc/pki/ca-trust/source/anchors" : "usr/local/share/ca-certificates"
            _ = try await engine.exec(container, ["mkdir", "-p", "/" + directory])
            let certificates = Self.splitPEM(bundle)
            var archive = TarArchive()
            for (index, certificate) in certificates.enumerated() {
                archive.add("\(directory)/custom_ca_cert_\(index).crt", Array(certificate.utf8))
            }
            try await engine.putArchive(container, archive.finished())
            _ = try await engine.exec(container, redHat ? ["update-ca-trust", "extract"] : ["update-ca-certificates"])
        }
        if frp, let directory = certificateDirectory {
            // Read off the loop; all three or none (HaRP skips the copy when one is missing).
            let files = ["ca.crt", "client.crt", "client.key"]
            let contents = await BlockingWork.run { files.compactMap { FileManager.default.contents(atPath: "\(directory)/\($0)") } }
            if contents.count == files.count {
                var archive = TarArchive()
                for (file, data) in zip(files, contents) {
                    archive.add("certs/frp/\(file)", Array(data), mode: file.hasSuffix(".key") ? 0o600 : 0o644)
                }
                try await engine.putArchive(container, archive.finished())
            }
        }
        if !running { _ = try await engine.call("POST", "/containers/\(container)/stop") }
        return Reply(status: 204, body: [])
    }

    /// Each `-----BEGIN CERTIFICATE-----` … `-----END CERTIFICATE-----` block of a bundle.
    static func splitPEM(_ bundle: String) -> [String] {
        var certificates: [String] = []
        var current: [Substring] = []
        for line in bundle.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("-----BEGIN CERTIFICATE-----") { current = [] }
            current.append(line)
            if line.hasPrefix("-----END CERTIFICATE-----") { certificates.append(current.joined(separator: "\n") + "\n") }
        }
        return certificates
    }
}

/// Calls on one Docker Engine, through the shared `HTTPClient`.
struct Engine {
    let client: HTTPClient
    let upstream: Upstream
    let port: UInt16
    let loop: EventLoop

    func call(_ method: String, _ path: String, json: [String: Any]? = nil, body: [UInt8] = [],
              contentType: String? = nil) async throws -> HTTPClientResponse {
        var headers: [(String, String)] = []
        var bytes = body
        if let json {
            bytes = ControlPlane.jsonBytes(json)
            headers.append(("Content-Type", "application/json"))
        } else if let contentType {
            headers.append(("Content-Type", contentType))
        }
        do {
            return try await client.request(method, upstream, target: path, headers: headers, body: bytes, on: loop)
        } catch {
            switch error {
            case .connect: throw DockerActions.Failure(reply: DockerActions.text(503, "Could not connect to Docker Engine on port \(port)"))
            case .timedOut: throw DockerActions.Failure(reply: DockerActions.text(504, "Timeout communicating with Docker Engine on port \(port)"))
            default: throw DockerActions.Failure(reply: DockerActions.text(503, "Error communicating with Docker Engine: \(error)"))
            }
        }
    }

    static func object(_ body: [UInt8]) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:]
    }

    /// Runs `command` in the container and collects its standard output.
    func exec(_ container: String, _ command: [String]) async throws -> (output: String, exitCode: Int) {
        let created = try await call("POST", "/containers/\(container)/exec", json: ["AttachStdout": true, "AttachStderr": true, "Cmd": command])
        guard created.status == 201, let id = Engine.object(created.body)["Id"] as? String else {
            throw DockerActions.Failure(reply: DockerActions.text(503, "Error creating exec in '\(container)': Status \(created.status)"))
        }
        let started = try await call("POST", "/exec/\(id)/start", json: ["Detach": false, "Tty": false])
        guard started.status == 200 else {
            throw DockerActions.Failure(reply: DockerActions.text(503, "Error starting exec in '\(container)': Status \(started.status)"))
        }
        let inspected = try await call("GET", "/exec/\(id)/json")
        return (Self.demultiplex(started.body), Engine.object(inspected.body)["ExitCode"] as? Int ?? -1)
    }

    /// The Engine's stream format without a TTY: frames of [stream, 0, 0, 0, size (4 bytes
    /// big-endian)] + payload; standard output (1) is kept.
    static func demultiplex(_ bytes: [UInt8]) -> String {
        var output: [UInt8] = []
        var index = 0
        while index + 8 <= bytes.count {
            let size = bytes[index + 4..<index + 8].reduce(0) { $0 << 8 | Int($1) }
            let end = min(bytes.count, index + 8 + size)
            if bytes[index] == 1 { output += bytes[index + 8..<end] }
            index = end
        }
        return String(decoding: output, as: UTF8.self)
    }

    func putArchive(_ container: String, _ tar: [UInt8]) async throws {
        let response = try await call("PUT", "/containers/\(container)/archive?path=/", body: tar, contentType: "application/x-tar")
        guard response.status == 200 else {
            throw DockerActions.Failure(reply: DockerActions.text(503, "Error copying files into '\(container)': Status \(response.status)"))
        }
    }
}

/// A ustar archive in memory (the Engine's archive endpoint takes one): a few small files.
/// Written by hand — the format is a 512-byte header per file — rather than linking libarchive
/// for three certificates.
struct TarArchive {
    private var bytes: [UInt8] = []

    mutating func add(_ path: String, _ content: [UInt8], mode: Int = 0o644) {
        var header = [UInt8](repeating: 0, count: 512)
        func put(_ text: String, at offset: Int, length: Int) {
            for (index, byte) in text.utf8.prefix(length).enumerated() { header[offset + index] = byte }
        }
        func octal(_ value: Int, length: Int) -> String {
            let digits = String(value, radix: 8)
            return String(repeating: "0", count: max(0, length - 1 - digits.count)) + digits
        }
        put(path, at: 0, length: 100)
        put(octal(mode, length: 8), at: 100, length: 7)
        put(octal(0, length: 8), at: 108, length: 7)  // uid
        put(octal(0, length: 8), at: 116, length: 7)  // gid
        put(octal(content.count, length: 12), at: 124, length: 11)
        put(octal(Int(Date().timeIntervalSince1970), length: 12), at: 136, length: 11)
        put("        ", at: 148, length: 8)  // checksum field counts as spaces
        header[156] = UInt8(ascii: "0")
        put("ustar", at: 257, length: 6)
        put("00", at: 263, length: 2)
        let checksum = header.reduce(0) { $0 + Int($1) }
        put(octal(checksum, length: 7) + "\0 ", at: 148, length: 8)
        bytes += header
        bytes += content
        bytes += [UInt8](repeating: 0, count: (512 - content.count % 512) % 512)
    }

    /// The archive with its end marker (two zero blocks).
    func finished() -> [UInt8] { bytes + [UInt8](repeating: 0, count: 1024) }
}
