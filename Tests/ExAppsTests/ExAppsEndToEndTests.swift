import Foundation
import Glibc
import HarpKernel
import HarpTestSupport
import Testing

/// The venv with nc_py_api, FastAPI and uvicorn (scripts/install-deps).
let ncPyAPIPython = "/opt/harp-test/venv/bin/python"

/// The whole path an ExApp takes in HaRP mode: a real nc_py_api app on a Unix socket, published
/// by upstream frpc with HaRP's ExApp frpc.toml (mutual TLS with harp's generated
/// certificates, the shared key in `metadatas.token`, `remotePort = 23000`), reached through
/// harp's `/exapps/<appid>/…` with a session decided by the fake Nextcloud.
@Suite("ExApps end to end: real frpc, a real nc_py_api app", .serialized,
       .enabled(if: FRPClient.isAvailable && FileManager.default.isExecutableFile(atPath: ncPyAPIPython),
                "frpc or the nc_py_api venv is missing (scripts/install-deps)"))
struct ExAppsEndToEndTests {
    static let python = ncPyAPIPython
    static let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    static let exappScript = here.appendingPathComponent("exapp.py").path
    static let wsPeer = here.deletingLastPathComponent().appendingPathComponent("WebSocketTests/ws_peer.py").path

    /// The nc_py_api app on `socket`, with AppAPI's environment for it.
    static func startExApp(socket: String) throws -> Process {
        unlink(socket)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [exappScript, socket]
        process.environment = ProcessInfo.processInfo.environment.merging([
            "APP_ID": "ncapp", "APP_SECRET": "nc-app-secret", "APP_VERSION": "1.0.0", "NEXTCLOUD_URL": "http://127.0.0.1:1",
        ]) { $1 }
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let ready = out.fileHandleForReading.availableData
        guard String(decoding: ready, as: UTF8.self).contains("ready") else { throw TestFailure("the ExApp did not start") }
        return process
    }

    @Test("curl and a WebSocket reach an nc_py_api app through harp and frpc; the app refuses what did not come through harp")
    func publishedExApp() throws {
        let gateway = try ExAppsFixture()
        gateway.nextcloud.register("ncapp", json: FakeNextcloud.record(token: "nc-app-secret", port: 23000, routes: [
            ("^/headers", 1, []), ("^/ws", 0, []),
        ]))
        let socket = NSTemporaryDirectory() + "harp-exapp-\(getpid()).sock"
        let app = try Self.startExApp(socket: socket)
        defer {
            kill(app.processIdentifier, SIGKILL)  // uvicorn may linger on SIGTERM
            app.waitUntilExit()
            unlink(socket)
        }
        let frpc = try FRPClient(config: gateway.frpcConfig(name: "ncapp", remotePort: 23000, unixPath: socket))
        defer { frpc.kill() }
        #expect(waitForListener(port: 23000), "frpc's proxy is up: \(frpc.log)")

        let signed = try gateway.get("/exapps/ncapp/headers", headers: [ExAppsGatewayTests.alice])
        #expect(signed.code == "200")
        #expect(signed.body.contains(#""username":"alice""#), "nc_py_api accepted harp's signature for alice: \(signed.body)")
        #expect(try gateway.code("/exapps/ncapp/headers") == "403", "a USER route without a session")
        let check = try HarpProcess.run(["exapps", "check", "--config", gateway.harp.configPath!]).stdout
        #expect(check.contains("ok    ncapp: tunnel on port 23000 (ncapp from 127.0.0.1:"), "\(check)")
        // Straight to the app, without harp's headers: nc_py_api refuses.
        let direct = try shell("curl -s -w ' %{http_code}' --unix-socket \(socket) http://x/headers").output
        #expect(direct == "Unauthorized 401")
        // A WebSocket through the same path, silent for longer than the client timeout (2 s).
        let idle = try shell("python3 \(Self.wsPeer) idle ws://127.0.0.1:\(gateway.port)/exapps/ncapp/ws 3 2>&1").output
        #expect(idle.hasPrefix("ok"), "\(idle)")
        try gateway.stop()
    }

    @Test("a frozen frpc (SIGSTOP) stalls only its own app: another tunnelled app and a direct one answer meanwhile")
    func frozenFrpc() throws {
        let gateway = try ExAppsFixture(frp: "allow_ports = [\"23001-23002\"]\nmax_ports_per_client = 0")
        let frozenOrigin = try HTTPTestOrigin(), otherOrigin = try HTTPTestOrigin()
        defer { frozenOrigin.stop(); otherOrigin.stop() }
        gateway.nextcloud.register("frozen", json: FakeNextcloud.record(token: "f", port: 23001, routes: [(".*", 0, [])]))
        gateway.nextcloud.register("other", json: FakeNextcloud.record(token: "o", port: 23002, routes: [(".*", 0, [])]))
        let frozen = try FRPClient(config: gateway.frpcConfig(name: "frozen", remotePort: 23001, localPort: frozenOrigin.address.port!))
        let other = try FRPClient(config: gateway.frpcConfig(name: "other", remotePort: 23002, localPort: otherOrigin.address.port!))
        defer { kill(frozen.process.processIdentifier, SIGCONT); frozen.kill(); other.kill() }
        #expect(waitForListener(port: 23001) && waitForListener(port: 23002), "\(frozen.log) \(other.log)")
        #expect(try gateway.code("/exapps/frozen/x") == "200")
        kill(frozen.process.processIdentifier, SIGSTOP)
        let stuck = try shellBackground("curl -s --max-time 6 '\(gateway.base)/exapps/frozen/x'")
        Thread.sleep(forTimeInterval: 0.3)
        for _ in 0..<10 {
            #expect(try gateway.code("/exapps/other/x") == "200")
            #expect(try gateway.code("/exapps/myapp/public") == "200")
        }
        #expect(stuck.isRunning, "the frozen app's request is still waiting while 20 others were answered")
        kill(frozen.process.processIdentifier, SIGCONT)
        stuck.waitUntilExit()
        try gateway.stop()
    }

    @Test("an frpc with a wrong shared key is refused, and its failures ban the IP (frp and HTTP alike)")
    func wrongKeyBans() throws {
        let gateway = try ExAppsFixture(exapps: "ban_count = 2\nban_window = \"60s\"")
        let socket = NSTemporaryDirectory() + "harp-exapp-bad-\(getpid()).sock"
        for _ in 0..<2 {
            let frpc = try FRPClient(config: gateway.frpcConfig(name: "ncapp", remotePort: 23000, unixPath: socket, key: "wrong-key"))
            #expect(frpc.waitForLog("invalid shared key"), "\(frpc.log)")
            frpc.kill()
        }
        let third = try FRPClient(config: gateway.frpcConfig(name: "ncapp", remotePort: 23000, unixPath: socket))  // the right key, too late
        #expect(third.waitForLog("banned"), "\(third.log)")
        third.kill()
        #expect(try gateway.code("/exapps/myapp/public") == "000", "the same IP's HTTP requests are dropped")
        try gateway.stop()
    }
}
