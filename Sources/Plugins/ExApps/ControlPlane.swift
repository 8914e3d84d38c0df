import FRP
import Foundation
import HTTPProxy
import HarpKernel
import Logging

/// `/exapps/app_api/...` with the right `harp-shared-key` (HaRP's agent API): `/info`,
/// `/heartbeat`, `/exapp_storage/<appid>`, `/frp_handler`, and the Docker Engine passthrough
/// to a deploy daemon's engine published through FRP.
struct ControlPlane {
    let state: ExAppsState

    /// The HaRP version harp answers AppAPI with: AppAPI requires at least 0.3.0 and reads
    /// nothing else, so harp reports the HaRP release whose contract it implements.
    static let compatibleVersion = "0.4.4"
    /// Control-plane bodies (records, frp logins) are small JSON.
    static let bodyLimit = 32 * 1024

    func handle(_ request: inout HTTPRequestHead, targetPath: String, query: String, exchange: Exchange) async -> ExAppsGateway.Decided {
        if let portText = request.headers["docker-engine-port"], !targetPath.hasPrefix("/docker/") {
            return dockerPassthrough(&request, port: portText, targetPath: targetPath, query: query)
        }
        let method = request.method
        switch (method, targetPath) {
        case ("GET", "/info"):
            return (Self.json(200, ["version": Self.compatibleVersion, "docker": true, "kubernetes": ["enabled": false],
                                    "implementation": "harp"]), "control")
        case ("GET", "/heartbeat"):
            return (Self.json(200, ["status": "ok"]), "control")
        case ("GET", "/harp/status"):
            return (Self.json(200, status()), "control")
        case ("POST", "/frp_handler"):
            let state = self.state
            return (.answerBody(limit: Self.bodyLimit) { body in FRPLoginHook(state: state).answer(body) }, "control")
        default:
            break
        }
        if targetPath.hasPrefix("/exapp_storage/") {
            let appID = String(targetPath.dropFirst("/exapp_storage/".count)).lowercased()
            // "app_api" is the control plane's own name: a record under it could never be reached.
            guard !appID.isEmpty, !appID.contains("/"), appID != "app_api" else { return ExAppsGateway.notFound }
            switch method {
            case "POST":
                let directory = state.directory
                let logger = state.logger
                return (.answerBody(limit: Self.bodyLimit) { body in
                    switch ExAppRecord.decode(body) {
                    case .success(let record):
                        record.logUnusableRoutes(appID: appID, logger: logger)
                        directory.store(appID, await ExAppEntry.resolving(record))
                        logger.info("ExApp record stored", metadata: ["app": "\(appID)", "upstream": "\(record.host):\(record.port)"])
                        return Reply(status: 204, body: [])
                    case .failure(let problem):
                        return Reply(status: 400, body: Array("400: Bad Request (\(problem))".utf8))
                    }
                }, "control")
            case "DELETE":
                return state.directory.remove(appID)
                    ? (.respond(Reply(status: 204, body: [])), "control")
                    : (.respond(status: 404, body: "404: Not Found"), "control")
            default:
                return (.respond(status: 405, body: "405: Method Not Allowed"), "control")
            }
        }
        if targetPath.hasPrefix("/docker/exapp/"), method == "POST" {
            let action = String(targetPath.dropFirst("/docker/exapp/".count))
            guard DockerActions.actions.contains(action), let docker = state.docker else { return ExAppsGateway.notFound }
            let port = request.headers["docker-engine-port"]
            let loop = exchange.loop
            // JSON bodies; the largest carries Nextcloud's CA bundle (a few hundred KiB).
            return (.answerBody(limit: 4 << 20) { body in await docker.run(action, port: port, body: body, on: loop) }, "control")
        }
        return ExAppsGateway.notFound
    }

    /// harp's own addition, for `harp exapps check`: the ExApps this process knows, the
    /// tunnels open on its frp server, and calls refused for a wrong key either way.
    private func status() -> [String: Any] {
        let apps = state.directory.all.sorted { $0.key < $1.key }.map { id, entry -> [String: Any] in
            ["id": id, "host": entry.record.host, "port": entry.record.port, "routes": entry.record.routes.count,
             "resolved": entry.upstream != nil]
        }
        let tunnels = (state.frp?.tunnels ?? [:]).values.sorted { $0.port < $1.port }.map { tunnel -> [String: Any] in
            ["name": tunnel.name, "port": tunnel.port, "client": tunnel.client]
        }
        let refused = state.refusedKeys.summary
        var keys: [String: Any] = ["refused_calls": refused.count]
        if refused.count > 0 { keys["last_refused"] = ["from": refused.lastFrom, "seconds_ago": refused.secondsAgo] }
        if let ago = state.nextcloud.health.refusedKeySecondsAgo { keys["nextcloud_refused_seconds_ago"] = ago }
        return ["apps": apps, "tunnels": tunnels, "shared_key": keys]
    }

    /// HaRP forwards a few Docker Engine calls to the engine a deploy daemon publishes through
    /// FRP (its frpc on 127.0.0.1:<docker-engine-port>), checked against an allow-list on
    /// the URL-decoded path, case-insensitively.
    private func dockerPassthrough(_ request: inout HTTPRequestHead, port portText: String, targetPath: String,
                                   query: String) -> ExAppsGateway.Decided {
        guard let port = Int(portText), (1...65535).contains(port) else { return ExAppsGateway.unavailable }
        // Checked on the decoded path, as the Engine routes it (it decodes before matching:
        // an image reference may come with its slashes encoded).
        guard DockerAllowList.allows(method: request.method, path: PercentEncoding.decode(targetPath)) else {
            return ExAppsGateway.forbidden
        }
        // No tunnel on that port: nothing to forward to (a connect would only be refused).
        if let frp = state.frp, frp.tunnels[port] == nil { return ExAppsGateway.unavailable }
        request.target = (targetPath.isEmpty ? "/" : targetPath) + query
        return (.forward(Upstream(address: .ipv4(host: UInt32(0x7f000001).bigEndian, port: UInt16(port)))), "docker")
    }

    static func json(_ status: Int, _ object: [String: Any]) -> RouteDecision {
        .respond(Reply(status: status, body: jsonBytes(object), contentType: "application/json; charset=utf-8"))
    }

    static func jsonBytes(_ object: [String: Any]) -> [UInt8] {
        Array((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8))
    }
}

/// HaRP's allow-list for the Docker passthrough: image pulls and inspections, the ExApp
/// containers' state and logs, and the engine's ping and version.
enum DockerAllowList {
    static func allows(method: String, path: String) -> Bool {
        var rest = Substring(path.lowercased())
        // An optional API version: /v1.44
        if rest.hasPrefix("/v"), let slash = rest.dropFirst(2).firstIndex(of: "/"),
           rest[rest.index(rest.startIndex, offsetBy: 2)..<slash].allSatisfy({ $0.isNumber || $0 == "." }),
           slash > rest.index(rest.startIndex, offsetBy: 2) {
            rest = rest[slash...]
        }
        switch method {
        case "GET":
            if rest == "/_ping" || rest == "/version" { return true }
            // An image reference may hold slashes (ghcr.io/org/app:1): what ends in /json.
            if rest.hasPrefix("/images/"), rest.hasSuffix("/json"), rest.count > "/images//json".count { return true }
            if rest.hasPrefix("/containers/nc_app_") {
                let name = rest.dropFirst("/containers/nc_app_".count).prefix { $0 != "/" }
                let after = rest.dropFirst("/containers/nc_app_".count + name.count)
                return !name.isEmpty && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) }
                    && (after == "/json" || after == "/logs")
            }
            return false
        case "HEAD":
            return rest == "/_ping"
        case "POST":
            return rest.hasPrefix("/images/create")
        default:
            return false
        }
    }
}
