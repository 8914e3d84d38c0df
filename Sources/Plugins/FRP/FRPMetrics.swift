import CoreMetrics

/// The frp plugin's metrics (exported by the admin plugin).
struct FRPMetrics: Sendable {
    let clientsOnline = Meter(label: "harp_frp_clients_online")
    let proxies = Meter(label: "harp_frp_proxies")
    let workConnectionsPooled = Meter(label: "harp_frp_work_connections", dimensions: [("state", "pooled")])
    let workConnectionsInUse = Meter(label: "harp_frp_work_connections", dimensions: [("state", "in_use")])
    let bytesToClient = Counter(label: "harp_frp_bytes_total", dimensions: [("direction", "to_client")])
    let bytesToUser = Counter(label: "harp_frp_bytes_total", dimensions: [("direction", "to_user")])

    func loginRefused(_ reason: String) {
        Counter(label: "harp_frp_logins_refused_total", dimensions: [("reason", reason)]).increment()
    }
}
