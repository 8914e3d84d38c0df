import HarpKernel
import Logging

/// The gateway's commands on its `CommandSocket`: `bans` lists the banned clients,
/// `bans_clear` (with `ip`, or without: everyone) lifts bans on the running harp.
struct ExAppsControlSocket {
    let state: ExAppsState
    let socket: CommandSocket

    init(state: ExAppsState, path: String) {
        self.state = state
        socket = CommandSocket(path: path, key: "exapps.control_socket", value: "\"\(path)\"",
                               inUse: "another harp gateway serves this socket (two on one ExApps port?)")
    }

    func listen(on listeners: ListenerSet) throws(ConfigError) {
        let state = self.state
        try socket.listen(on: listeners) { connection in await Self.serve(connection, state: state) }
    }

    private static func serve(_ connection: CommandConnection, state: ExAppsState) async {
        switch connection.command {
        case "bans":
            let bans = state.bans.banned().map { ban -> [String: Any] in
                ["ip": ban.ip, "failures": ban.failures, "reason": ban.reason, "ends_in_seconds": Int(ban.endsInSeconds.rounded(.up))]
            }
            await connection.send(["done": true, "bans": bans, "ban_count": state.configuration.banCount,
                                   "ban_window_seconds": Int(state.configuration.banWindow.duration.nanoseconds / 1_000_000_000)])
        case "bans_clear":
            let ip = connection.request["ip"] as? String
            let lifted = state.bans.clear(ip)
            state.logger.warning("bans cleared from the command line", metadata: ["client": "\(ip ?? "everyone")", "lifted": "\(lifted)"])
            await connection.send(["done": true, "lifted": lifted])
        case let command:
            await connection.send(["error": "unknown command \(command)"])
        }
    }

    func remove() { socket.remove() }
}
