import FRP
import Foundation
import HTTPProxy
import HarpKernel

/// HaRP's frps Login hook: a banned IP is refused, the shared key in `metas.token` admits,
/// anything else is refused and counted toward a ban. Applied in-process to every login on
/// harp's own frp server (`check`), and served at `/exapps/app_api/frp_handler` for an
/// external frps configured with HaRP's `httpPlugins` entry (`answer`).
struct FRPLoginHook: FRPLoginCheck {
    let state: ExAppsState

    func check(_ attempt: FRPLoginAttempt) async -> FRPLoginRefusal? {
        decide(ip: attempt.clientAddress?.hostText ?? "", token: attempt.metas["token"] ?? "")
    }

    /// nil admits.
    func decide(ip: String, token: String) -> FRPLoginRefusal? {
        if state.bans.isBanned(ip) { return .banned }
        if SecretComparison.equal(token, state.sharedKey) { return nil }
        state.bans.fail(ip, reason: "frp_key")
        return .invalidSharedKey
    }

    /// `POST /frp_handler` with frps' plugin body
    /// `{"content": {"client_address": "ip:port", "metas": {"token": …}}}`.
    func answer(_ body: [UInt8]) -> Reply {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any],
              let content = object["content"] as? [String: Any],
              let address = content["client_address"] as? String else {
            return Reply(status: 400, body: Array("400: Bad Request".utf8))
        }
        let token = (content["metas"] as? [String: Any])?["token"] as? String ?? ""
        switch decide(ip: Self.host(of: address), token: token) {
        case nil:
            return Reply(status: 200, body: ControlPlane.jsonBytes(["reject": false, "unchange": true]), contentType: "application/json; charset=utf-8")
        case .banned:
            return Reply(status: 200, body: ControlPlane.jsonBytes(["reject": true, "reject_reason": "banned"]),
                         contentType: "application/json; charset=utf-8")
        case .invalidSharedKey:
            return Reply(status: 400, body: Array("400: Bad Request".utf8))
        }
    }

    /// The IP of "ip:port" or "[v6]:port" (HaRP split at the first ':', which broke IPv6).
    static func host(of address: String) -> String {
        if address.hasPrefix("["), let close = address.firstIndex(of: "]") {
            return String(address[address.index(after: address.startIndex)..<close])
        }
        if let colon = address.lastIndex(of: ":"), address.firstIndex(of: ":") == colon {
            return String(address[..<colon])
        }
        return address
    }
}
