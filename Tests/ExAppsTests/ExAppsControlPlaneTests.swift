import Foundation
import Glibc
import HarpKernel
import HarpTestSupport
import Synchronization
import Testing

/// `/exapps/app_api/...`: what AppAPI calls on HaRP, and the frps Login hook.
@Suite("ExApps control plane")
struct ExAppsControlPlaneTests {
    static let key = "harp-shared-key: \(ExAppsFixture.key)"

    @Test("/info and /heartbeat answer AppAPI; without the key: 401, counted")
    func infoAndHeartbeat() throws {
        let gateway = try ExAppsFixture(exapps: "ban_count = 2\nban_window = \"60s\"")
        let info = try gateway.get("/exapps/app_api/info", headers: [Self.key])
        #expect(info.code == "200")
        let object = try JSONSerialization.jsonObject(with: Data(info.body.utf8)) as? [String: Any]
        #expect(object?["version"] as? String == "0.4.4", "AppAPI requires at least 0.3.0")
        #expect(object?["docker"] as? Bool == true)
        #expect((object?["kubernetes"] as? [String: Any])?["enabled"] as? Bool == false)
        #expect(try gateway.get("/exapps/app_api/heartbeat", headers: [Self.key]) == ("200", #"{"status":"ok"}"#))
        #expect(try gateway.get("/exapps/app_api/heartbeat") == ("401", "401 Unauthorized"))
        #expect(try gateway.get("/exapps/app_api/info", headers: ["harp-shared-key: wrong"]) == ("401", "401 Unauthorized"))
        #expect(try gateway.code("/exapps/app_api/info", headers: [Self.key, "harp-shared-key: wrong"]) == "000",
                "two copies of the key are not trusted (the second failure: banned)")
        #expect(try gateway.code("/exapps/app_api/heartbeat", headers: [Self.key]) == "000", "banned, key or not")
        try gateway.stop()
    }

    @Test("/exapp_storage: a pushed record serves at once without asking Nextcloud; DELETE removes it (404 when absent); bad records get 400")
    func exappStorage() throws {
        let gateway = try ExAppsFixture()
        let record = FakeNextcloud.record(token: "pushed-secret", version: "3.0.0", port: Int(gateway.app.address.port!), routes: [(".*", 0, [])])
        #expect(try gateway.get("/exapps/app_api/exapp_storage/Pushed", headers: [Self.key, "Content-Type: application/json"],
                                method: "POST", data: record).code == "204")
        let echoed = try gateway.get("/exapps/pushed/headers").body
        #expect(echoed.contains("EX-APP-VERSION: 3.0.0"))
        #expect(gateway.nextcloud.calls("exapp-meta").isEmpty, "served from the pushed record")
        #expect(try gateway.get("/exapps/app_api/exapp_storage/pushed", headers: [Self.key], method: "DELETE").code == "204")
        #expect(try gateway.get("/exapps/app_api/exapp_storage/pushed", headers: [Self.key], method: "DELETE") == ("404", "404: Not Found"))
        #expect(try gateway.code("/exapps/pushed/headers") == "404", "gone: Nextcloud does not know it either")
        for bad in [#"{"exapp_token":"t"}"#, #"{"exapp_token":"t","exapp_version":3,"host":"h","port":1}"#, "not json",
                    #"{"exapp_token":"t","exapp_version":"1","host":"h","port":1,"routes":[{"url":".*","access_level":7}]}"#] {
            #expect(try gateway.get("/exapps/app_api/exapp_storage/bad", headers: [Self.key], method: "POST", data: bad).code == "400", "\(bad)")
        }
        #expect(try gateway.get("/exapps/app_api/exapp_storage/pushed", method: "POST", data: record).code == "401")
        #expect(try gateway.get("/exapps/app_api/exapp_storage/app_api", headers: [Self.key], method: "POST", data: record).code == "404",
                "the control plane's own name cannot hold a record")
        try gateway.stop()
    }

    @Test("/frp_handler: the shared key admits, a wrong one is 400 and counted, a banned IP is rejected")
    func frpHandler() throws {
        let gateway = try ExAppsFixture(exapps: "ban_count = 2\nban_window = \"60s\"")
        func login(_ token: String, from address: String) throws -> (code: String, body: String) {
            try gateway.get("/exapps/app_api/frp_handler?version=0.1.0&op=Login", headers: [Self.key], method: "POST",
                            data: #"{"version":"0.1.0","op":"Login","content":{"client_address":"\#(address)","metas":{"token":"\#(token)"}}}"#)
        }
        #expect(try login(ExAppsFixture.key, from: "192.0.2.1:5000") == ("200", #"{"reject":false,"unchange":true}"#))
        #expect(try login("wrong", from: "192.0.2.9:5000").code == "400")
        #expect(try login("wrong", from: "[2001:db8::9]:5000").code == "400")
        #expect(try login("wrong", from: "192.0.2.9:5001").code == "400")
        #expect(try login(ExAppsFixture.key, from: "192.0.2.9:5002") == ("200", #"{"reject":true,"reject_reason":"banned"}"#))
        #expect(try login(ExAppsFixture.key, from: "[2001:db8::9]:1").code == "200", "one failure only for the IPv6 client")
        #expect(try gateway.get("/exapps/app_api/frp_handler", headers: [Self.key], method: "POST", data: "{}").code == "400")
        try gateway.stop()
    }

    @Test("the Docker Engine passthrough: allow-listed calls reach the engine published through FRP, others get 403, no tunnel 503")
    func dockerPassthrough() throws {
        let gateway = try ExAppsFixture(frp: "allow_ports = [\"24000-24099\"]\nmax_ports_per_client = 0")
        let socket = NSTemporaryDirectory() + "harp-docker-\(getpid()).sock"
        let engine = try TinyHTTPServer(unixPath: socket) { request in
            .json(200, #"{"engine":"fake","method":"\#(request.method)","target":"\#(request.target)"}"#)
        }
        defer { engine.stop(); unlink(socket) }
        let enginePort = 24000 + UInt16.random(in: 10...99)
        let tunnel = try FRPClient(config: gateway.frpcConfig(name: "bundled-deploy-daemon", remotePort: enginePort, unixPath: socket),
                                   kind: .harpTunnel)
        defer { tunnel.kill() }
        #expect(waitForListener(port: enginePort), "\(tunnel.log)")
        let docker = [Self.key, "docker-engine-port: \(enginePort)"]
        for (method, path) in [("GET", "/v1.44/_ping"), ("GET", "/_ping"), ("HEAD", "/v1.41/_ping"), ("GET", "/v1.44/version"),
                               ("GET", "/v1.44/images/ghcr.io%2Fnextcloud%2Fapp:1.0/json"), ("GET", "/v1.44/containers/nc_app_myapp/json"),
                               ("GET", "/v1.44/containers/nc_app_myapp/logs?stdout=1"), ("POST", "/v1.44/images/create?fromImage=x")] {
            let flag = method == "HEAD" ? "-I" : "-X \(method)"
            let code = try shell("curl -s -o /dev/null -w '%{http_code}' \(flag) \(docker.map { "-H '\($0)'" }.joined(separator: " ")) '\(gateway.base)/exapps/app_api\(path)'").output
            #expect(code == "200", "\(method) \(path) is allowed")
        }
        let pinged = try gateway.get("/exapps/app_api/v1.44/containers/nc_app_myapp/json", headers: docker).body
        #expect(pinged.contains(#""target":"/v1.44/containers/nc_app_myapp/json""#), "the path after /exapps/app_api reached the engine")
        for (method, path) in [("GET", "/v1.44/containers/json"), ("POST", "/v1.44/containers/nc_app_myapp/start"),
                               ("DELETE", "/v1.44/containers/nc_app_myapp"), ("GET", "/v1.44/containers/other/json"),
                               ("POST", "/v1.44/containers/create"), ("GET", "/v1.44/info")] {
            #expect(try gateway.get("/exapps/app_api\(path)", headers: docker, method: method).code == "403", "\(method) \(path) is refused")
        }
        #expect(try gateway.get("/exapps/app_api/_ping", headers: [Self.key, "docker-engine-port: 24001"]).code == "503", "no tunnel on that port")
        #expect(try gateway.get("/exapps/app_api/docker/exapp/exists", headers: [Self.key], method: "POST", data: "{}")
                == ("400", "Missing 'docker-engine-port' header."))
        try gateway.stop()
    }

    @Test("harp exapps check: each line ok or what to do; exit 1 when something is wrong")
    func check() throws {
        let gateway = try ExAppsFixture()
        // Three ExApps on this host: myapp listens itself (direct), tunneled waits for an frpc
        // on a port frp allows, gone is on a port nothing listens on and frp does not allow.
        let refusing = try RefusingPort()
        let tunneledPort = 23100 + Int.random(in: 0..<800)
        gateway.nextcloud.register("tunneled", json: FakeNextcloud.record(token: "t", port: tunneledPort, routes: [("^/", 0, [])]))
        gateway.nextcloud.register("gone", json: FakeNextcloud.record(token: "g", port: Int(refusing.port), routes: [("^/", 0, [])]))
        for app in ["myapp/public", "tunneled/x", "gone/x"] { _ = try gateway.code("/exapps/\(app)") }  // harp now knows them
        let result = try HarpProcess.run(["exapps", "check", "--config", gateway.harp.configPath!])
        let lines = result.stdout.components(separatedBy: "\n")
        func line(_ text: String) -> String? { lines.first { $0.contains(text) } }
        #expect(line("Nextcloud at")?.hasPrefix("ok") == true, "\(result.stdout)")
        #expect(line("(version 32.0.1)") != nil)
        #expect(line("ExApps listener")?.hasPrefix("ok") == true)
        #expect(line("the running harp accepts the shared key")?.hasPrefix("ok") == true)
        #expect(line("no call to harp came with a wrong harp-shared-key")?.hasPrefix("ok") == true)
        #expect(line("FRP listener")?.hasPrefix("ok") == true)
        #expect(line("server.crt (harp.nc) verifies against ca.crt")?.hasPrefix("ok") == true)
        #expect(line("client.crt (harp.client.nc) verifies against ca.crt")?.hasPrefix("ok") == true)
        #expect(line("myapp: Nextcloud accepts the shared key")?.hasPrefix("ok") == true)
        #expect(line("myapp: direct at 127.0.0.1:\(gateway.app.address.port!)")?.hasPrefix("ok") == true, "\(result.stdout)")
        #expect(line("tunneled: no frpc is connected for port \(tunneledPort)")?.hasPrefix("FAIL") == true)
        #expect(line("gone: nothing listens at 127.0.0.1:\(refusing.port), outside frp's allow_ports")?.hasPrefix("FAIL") == true)
        #expect(result.status == 1)

        // A deploy daemon registered with another key: its control-plane calls are refused,
        // logged once a minute at most, and the check names the source.
        for _ in 0..<3 { #expect(try gateway.code("/exapps/app_api/info", headers: ["harp-shared-key: stale-key"]) == "401") }
        try gateway.harp.waitForOutput("a control-plane call came with a wrong harp-shared-key")
        #expect(gateway.harp.occurrences(of: "a control-plane call came with a wrong harp-shared-key") == 1)
        let refused = try HarpProcess.run(["exapps", "check", "--config", gateway.harp.configPath!]).stdout
        #expect(refused.contains("FAIL  3 calls to harp came with a wrong harp-shared-key (the last from 127.0.0.1,"), "\(refused)")

        // Another key than the running harp's, and a broken client certificate.
        let config = try String(contentsOfFile: gateway.harp.configPath!, encoding: .utf8)
            .replacingOccurrences(of: "shared_key = \"\(ExAppsFixture.key)\"", with: "shared_key = \"other-key\"")
        try Data("not a certificate".utf8).write(to: URL(fileURLWithPath: gateway.certs + "/frp/client.crt"))
        let wrong = try HarpProcess.run(["exapps", "check"], config: config)
        #expect(wrong.stdout.contains("FAIL  the running harp refuses this shared key"), "\(wrong.stdout)")
        #expect(wrong.stdout.contains("FAIL  FRP certificates: \(gateway.certs)/frp/client.crt is missing or not a PEM certificate"))
        #expect(wrong.status == 1)
        try gateway.stop()
    }

    @Test("contrib/docker-engine-tunnel.toml as shipped (paths, key and port filled in) publishes a Docker Engine through `harp tunnel`")
    func contribDockerTunnel() throws {
        let gateway = try ExAppsFixture()
        let engine = try FakeDockerEngine(socket: NSTemporaryDirectory() + "harp-engine-\(UUID().uuidString.prefix(8)).sock")
        defer { engine.stop() }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let port = 24000 + UInt16.random(in: 10...99)
        let config = try String(contentsOf: root.appendingPathComponent("contrib/docker-engine-tunnel.toml"), encoding: .utf8)
            .replacingOccurrences(of: "serverPort = 8782", with: "serverPort = \(gateway.frpPort)")
            .replacingOccurrences(of: "/etc/harp/frp/", with: gateway.certs + "/frp/")
            .replacingOccurrences(of: "\"change-me\"", with: "\"\(ExAppsFixture.key)\"")
            .replacingOccurrences(of: "remotePort = 24000", with: "remotePort = \(port)")
            .replacingOccurrences(of: "/var/run/docker.sock", with: engine.socket)
        let tunnel = try FRPClient(config: config, kind: .harpTunnel)
        defer { tunnel.kill() }
        guard waitForListener(port: port) else { throw TestFailure("the engine's tunnel did not open: \(tunnel.log)") }
        _ = try gateway.get("/exapps/app_api/v1.44/_ping", headers: [Self.key, "docker-engine-port: \(port)"])
        #expect(engine.calls == ["GET /v1.44/_ping"], "the call reached the engine through the tunnel")
        try gateway.stop()
    }

    /// A Docker Engine published through `harp tunnel` on a port the fixture's frp allows.
    static func publishedEngine(_ gateway: ExAppsFixture) throws -> (FakeDockerEngine, FRPClient, UInt16) {
        let engine = try FakeDockerEngine(socket: NSTemporaryDirectory() + "harp-engine-\(UUID().uuidString.prefix(8)).sock")
        let port = 24000 + UInt16.random(in: 10...99)
        let tunnel = try FRPClient(config: gateway.frpcConfig(name: "bundled-deploy-daemon", remotePort: port, unixPath: engine.socket),
                                   kind: .harpTunnel)
        guard waitForListener(port: port) else { throw TestFailure("the engine's tunnel did not open: \(tunnel.log)") }
        return (engine, tunnel, port)
    }

    @Test("container actions drive the Docker Engine like HaRP's agent: exists, create, start, wait_for_start, install_certificates, stop, remove, image_remove")
    func containerActions() throws {
        let gateway = try ExAppsFixture(frp: "allow_ports = [\"24000-24099\"]\nmax_ports_per_client = 0")
        let (engine, tunnel, port) = try Self.publishedEngine(gateway)
        defer { tunnel.kill(); engine.stop() }
        let headers = [Self.key, "docker-engine-port: \(port)", "Content-Type: application/json"]
        func action(_ name: String, _ body: String) throws -> (code: String, body: String) {
            try gateway.get("/exapps/app_api/docker/exapp/\(name)", headers: headers, method: "POST", data: body)
        }
        let app = #"{"name":"myapp","instance_id":""}"#
        #expect(try action("exists", app) == ("200", #"{"exists":false}"#))
        let created = try action("create", #"{"name":"myapp","instance_id":"","image_id":"ghcr.io/nextcloud/app:1.0","network_mode":"nextcloud","environment_variables":["APP_ID=myapp"],"mount_points":[{"source":"/srv/x","target":"/x","mode":"ro"}],"compute_device":"cuda","start_container":true}"#)
        #expect(created == ("201", #"{"id":"id-nc_app_myapp","name":"nc_app_myapp"}"#))
        let body = try JSONSerialization.jsonObject(with: Data(engine.store.containers.withLock { $0["nc_app_myapp"]!.body }.utf8)) as? [String: Any]
        let host = body?["HostConfig"] as? [String: Any]
        #expect(body?["Hostname"] as? String == "myapp")
        #expect(body?["Env"] as? [String] == ["APP_ID=myapp"])
        #expect(host?["NetworkMode"] as? String == "nextcloud")
        #expect((host?["Mounts"] as? [[String: Any]])?.count == 2, "the data volume and the bind mount")
        #expect(host?["DeviceRequests"] != nil, "cuda")
        #expect(((body?["NetworkingConfig"] as? [String: Any])?["EndpointsConfig"] as? [String: Any])?["nextcloud"] != nil)
        #expect(engine.store.volumes.withLock { $0 } == ["nc_app_myapp_data"])
        #expect(try action("create", #"{"name":"myapp","image_id":"x"}"#) == ("409", "Container with name 'nc_app_myapp' already exists."))
        #expect(try action("exists", app) == ("200", #"{"exists":true,"image_ref":"ghcr.io/nextcloud/app:1.0"}"#))
        #expect(try action("start", app).code == "204")
        #expect(try action("start", app) == ("200", "Container already started"))
        engine.setHealth("nc_app_myapp", "healthy")
        #expect(try action("wait_for_start", app) == ("200", #"{"health":"healthy","started":true,"status":"running"}"#))
        let bundle = "-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n-----BEGIN CERTIFICATE-----\\nBBBB\\n-----END CERTIFICATE-----\\n"
        #expect(try action("install_certificates", #"{"name":"myapp","system_certs_bundle":"\#(bundle)","install_frp_certs":true}"#).code == "204")
        #expect(engine.archivedFiles("nc_app_myapp").sorted() == [
            "certs/frp/ca.crt", "certs/frp/client.crt", "certs/frp/client.key",
            "usr/local/share/ca-certificates/custom_ca_cert_0.crt", "usr/local/share/ca-certificates/custom_ca_cert_1.crt",
        ])
        #expect(try action("stop", app).code == "204")
        #expect(try action("stop", app) == ("200", "Container already stopped"))
        #expect(try action("wait_for_start", app) == ("200", #"{"health":"healthy","reason":"non-recoverable state: exited","started":false,"status":"exited"}"#))
        #expect(try action("remove", #"{"name":"myapp","remove_data":true}"#).code == "204")
        #expect(engine.store.volumes.withLock { $0 }.isEmpty)
        #expect(try action("wait_for_start", app) == ("200", #"{"reason":"container not found","started":false,"status":"not_found"}"#))
        #expect(try action("start", app) == ("404", "Container 'nc_app_myapp' not found."))
        #expect(try action("image_remove", #"{"name":"myapp","image_ref":"ghcr.io/nextcloud/app:1.0"}"#) == ("200", #"{"bytes_freed":1234,"deleted":true}"#))
        #expect(try action("image_remove", #"{"name":"myapp","image_ref":"ghcr.io/nextcloud/app:1.0"}"#) == ("200", #"{"bytes_freed":0,"deleted":true,"reason":"not_found"}"#))
        // Requests that cannot be carried out.
        #expect(try action("exists", "not json") == ("400", "Invalid JSON body"))
        #expect(try action("exists", #"{"instance_id":""}"#).code == "400")
        #expect(try gateway.get("/exapps/app_api/docker/exapp/exists", headers: [Self.key], method: "POST", data: app)
                == ("400", "Missing 'docker-engine-port' header."))
        #expect(try gateway.get("/exapps/app_api/docker/exapp/exists", headers: [Self.key, "docker-engine-port: x"], method: "POST", data: app)
                == ("400", "Invalid 'docker-engine-port' header value: x"))
        let nothing = try RefusingPort()
        #expect(try gateway.get("/exapps/app_api/docker/exapp/exists", headers: [Self.key, "docker-engine-port: \(nothing.port)"], method: "POST", data: app)
                == ("503", "Could not connect to Docker Engine on port \(nothing.port)"))
        try gateway.stop()
    }
}
