import CoreMetrics

/// The http plugin's metrics (swift-metrics; exported by the admin plugin as Prometheus text).
struct HTTPMetrics: Sendable {
    private let requests: [Counter]
    private let refusedRequests: Counter
    private let activeConnections: Meter
    private let openTunnels: Meter
    private let bytesIn: Counter
    private let bytesOut: Counter
    private let connectErrors: Counter
    /// Few opens for many requests is keep-alive reuse at work.
    private let upstreamOpens: Counter
    /// Requests sent again on a fresh connection after a reused one turned out closed.
    private let upstreamRetries: Counter
    /// Idle kept-alive connections closed to make room at the connection limit, and new
    /// connections refused because none was idle.
    private let shed: Counter
    private let refusedConnections: Counter
    private let latency: Timer

    init() {
        requests = ["1xx", "2xx", "3xx", "4xx", "5xx", "dropped"].map {
            Counter(label: "harp_http_requests_total", dimensions: [("class", $0)])
        }
        refusedRequests = Counter(label: "harp_http_refused_requests_total")
        activeConnections = Meter(label: "harp_http_active_connections")
        openTunnels = Meter(label: "harp_http_open_tunnels")
        bytesIn = Counter(label: "harp_http_bytes_total", dimensions: [("direction", "to_upstream")])
        bytesOut = Counter(label: "harp_http_bytes_total", dimensions: [("direction", "to_client")])
        connectErrors = Counter(label: "harp_http_upstream_connect_errors_total")
        upstreamOpens = Counter(label: "harp_http_upstream_connections_opened_total")
        upstreamRetries = Counter(label: "harp_http_upstream_retries_total")
        shed = Counter(label: "harp_http_connections_shed_total")
        refusedConnections = Counter(label: "harp_http_connections_refused_total")
        latency = Timer(label: "harp_http_request_duration_seconds", preferredDisplayUnit: .seconds)
    }

    func record(_ exchange: Exchange) {
        let index = exchange.status == 0 ? 5 : min(max(exchange.status / 100, 1), 5) - 1
        requests[index].increment()
        if exchange.requestBytes > 0 { bytesIn.increment(by: exchange.requestBytes) }
        if exchange.responseBytes > 0 { bytesOut.increment(by: exchange.responseBytes) }
        latency.recordNanoseconds(Int64(exchange.finished &- exchange.started))
    }

    func refused(status: Int) {
        refusedRequests.increment()
        requests[min(max(status / 100, 1), 5) - 1].increment()
    }

    func connectionOpened() { activeConnections.increment() }
    func connectionClosed() { activeConnections.decrement() }
    func tunnelOpened() { openTunnels.increment() }
    func tunnelClosed() { openTunnels.decrement() }
    func upstreamConnectFailed() { connectErrors.increment() }
    func upstreamConnectionOpened() { upstreamOpens.increment() }
    func upstreamRetried() { upstreamRetries.increment() }
    func connectionShed() { shed.increment() }
    func connectionRefused() { refusedConnections.increment() }
}
