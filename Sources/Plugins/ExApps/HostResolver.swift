import HTTPProxy
import HarpKernel

/// Turns an ExApp's host and port into an upstream. FRP-published apps are `127.0.0.1`;
/// Docker-network apps are container names, looked up with getaddrinfo on the kernel's
/// `BlockingWork` threads (it blocks; a loop thread never waits for DNS), IPv4 preferred,
/// once per record.
enum HostResolver {
    static func upstream(host: String, port: Int) async -> Upstream? {
        guard (1...65535).contains(port) else { return nil }
        return await address(host: host, port: UInt16(port)).map { Upstream(address: $0) }
    }

    static func address(host: String, port: UInt16) async -> SocketAddress? {
        guard !host.isEmpty else { return nil }
        let text = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        if IPRange.bytes(of: host) != nil { return try? SocketAddress(parsing: text) }
        return await BlockingWork.run { try? SocketAddress(parsing: text) }
    }
}
