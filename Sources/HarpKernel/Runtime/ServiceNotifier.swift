import CShims
import Glibc

/// systemd's notify protocol (sd_notify(3)), without libsystemd: one datagram per state to
/// the socket in `NOTIFY_SOCKET` — `READY=1` once harp listens, `WATCHDOG=1` while every loop
/// turns (sent by `StallDetector`), `STOPPING=1` at shutdown. With `Type=notify` and
/// `WatchdogSec=` (contrib/harp.service) systemd restarts a harp whose loops froze.
public final class ServiceNotifier: Sendable {
    private let fd: Int32
    private let address: [UInt8]
    /// `WATCHDOG_USEC` in nanoseconds when systemd asks this process for keep-alives.
    public let watchdogPeriod: UInt64?

    /// nil when harp does not run under a service manager that listens (`NOTIFY_SOCKET`
    /// unset, or not a Unix socket path).
    public init?(environment: [String: String]) {
        guard let path = environment["NOTIFY_SOCKET"], path.hasPrefix("/") || path.hasPrefix("@"),
              path.utf8.count < 108 else { return nil }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return nil }
        self.fd = fd
        // An abstract socket's name starts with a NUL where the path has '@'.
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        address = bytes
        // The keep-alive is for this process only when WATCHDOG_PID is unset or names it.
        let forUs = environment["WATCHDOG_PID"].map { Int32($0) == getpid() } ?? true
        if forUs, let text = environment["WATCHDOG_USEC"], let microseconds = UInt64(text), microseconds > 0 {
            watchdogPeriod = microseconds * 1000
        } else {
            watchdogPeriod = nil
        }
    }

    deinit { close(fd) }

    /// Sends one state line; a full or missing socket loses it (the protocol is best effort).
    public func send(_ state: String) {
        var storage = sockaddr_un()
        storage.sun_family = sa_family_t(AF_UNIX)
        let length = withUnsafeMutableBytes(of: &storage.sun_path) { path in
            path.copyBytes(from: address)
            return MemoryLayout<sa_family_t>.size + address.count
        }
        let bytes = Array(state.utf8)
        _ = withUnsafePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                sendto(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL), address, socklen_t(length))
            }
        }
    }
}
