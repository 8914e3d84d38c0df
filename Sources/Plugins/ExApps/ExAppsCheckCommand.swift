import ArgumentParser
import Dispatch
import FRP
import Foundation
import Glibc
import HTTPProxy
import HarpKernel

/// `harp exapps check`: what an admin asks when an ExApp does not answer. Reads the
/// configuration exactly as `harp serve` would (the file or HaRP's variables), then reports,
/// one line each, ok or what to do: Nextcloud reachable, the listeners up, the running harp
/// accepting the key, the FRP certificates, Nextcloud accepting the key for each ExApp, and
/// each ExApp's tunnel.
struct ExAppsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "exapps", abstract: "The ExApp gateway's commands.",
                                                    subcommands: [Check.self, ExAppsBansCommand.self])

    /// The `[exapps]` section `harp serve` would run with `--config path` (nil: HaRP's variables).
    static func configuration(path: String?) throws -> ExAppsConfiguration {
        try sections(path: path).exapps
    }

    static func sections(path: String?) throws -> (exapps: ExAppsConfiguration, frp: FRPConfiguration?) {
        do {
            let file = try ConfigFile.resolve(path: path, registry: PluginRegistry.executable, environment: ProcessEnvironment.current(),
                                              fallback: nil)
            let exapps = try file.configuration(of: ExAppsPlugin.self)
            let frp = file.selection(override: nil).contains(FRPPlugin.name) ? try file.configuration(of: FRPPlugin.self) : nil
            return (exapps, frp)
        } catch {
            throw CommandFailure("\(error)")
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check Nextcloud, the listeners, certificates and every ExApp's tunnel.")

        @Option(name: .long, help: "A TOML config file (default: HaRP's environment variables).")
        var config: String?

        func run() throws {
            try CommandFailure.reporting(json: false) {
                let (exapps, frp) = try ExAppsCommand.sections(path: config)
                let failures: Int
                do { failures = try ExAppsCheck(exapps: exapps, frp: frp).run { print($0) } } catch { throw CommandFailure("\(error)") }
                Glibc.exit(failures == 0 ? 0 : 1)
            }
        }
    }
}

/// The checks, on a loop of their own (the Nextcloud calls use the same `HTTPClient` as the
/// gateway, TLS settings included).
struct ExAppsCheck {
    let exapps: ExAppsConfiguration
    let frp: FRPConfiguration?

    /// Prints each finding; returns how many failed.
    func run(_ print: (String) -> Void) throws -> Int {
        var failures = 0
        func report(_ ok: Bool, _ text: String) {
            print((ok ? "ok    " : "FAIL  ") + text)
            if !ok { failures += 1 }
        }
        let key = try exapps.resolvedSharedKey()
        let url = try NextcloudURL(exapps.nextcloudURL)
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        let tls = try TLSContext.client(ca: exapps.nextcloudCA, verify: exapps.nextcloudVerify)
        let client = try HTTPClient(loops: [loop], connectTimeout: .seconds(5), responseTimeout: .seconds(10), tls: tls)
        func get(_ upstream: Upstream, _ target: String, headers: [(String, String)]) -> Result<HTTPClientResponse, HTTPClientError> {
            Self.wait(on: loop) { () async -> Result<HTTPClientResponse, HTTPClientError> in
                do throws(HTTPClientError) {
                    return .success(try await client.request("GET", upstream, target: target, headers: headers, on: loop))
                } catch {
                    return .failure(error)
                }
            }
        }

        // Nextcloud.
        let nextcloud = Self.wait(on: loop) { await HostResolver.address(host: url.hostName, port: url.port) }
            .map { Upstream(address: $0, tls: url.isTLS, host: url.hostName, port: url.port) }
        if let nextcloud {
            switch get(nextcloud, url.pathPrefix + "/status.php", headers: [("Host", url.host)]) {
            case .success(let response) where response.status == 200:
                let object = (try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any]
                let version = object?["versionstring"] as? String ?? "?"
                report(object?["installed"] as? Bool == true, "Nextcloud at \(exapps.nextcloudURL) answers (version \(version))")
            case .success(let response):
                report(false, "Nextcloud at \(exapps.nextcloudURL) answers status.php with \(response.status): check NC_INSTANCE_URL (Nextcloud's base URL, as users reach it)")
            case .failure(let error):
                let certificate = url.isTLS && "\(error)".lowercased().contains("certificate")
                report(false, certificate
                       ? "Nextcloud at \(exapps.nextcloudURL): its certificate does not verify (\(error)). A private CA: HP_NEXTCLOUD_CA=/path/ca.pem (exapps.nextcloud_ca); to turn the check off (logged): HP_NEXTCLOUD_VERIFY=false (exapps.nextcloud_verify)"
                       : "Nextcloud at \(exapps.nextcloudURL) cannot be reached (\(error)): check NC_INSTANCE_URL and that this host can reach it")
            }
        } else {
            report(false, "Nextcloud's host name \(url.hostName) does not resolve: check NC_INSTANCE_URL and this host's DNS")
        }

        // The listeners, and the running harp's view.
        var status: [String: Any]?
        for address in exapps.listen {
            let local = Self.local(address)
            guard Self.accepts(local) else {
                report(false, "ExApps listener \(address): nothing listens; is `harp serve` running with this configuration?")
                continue
            }
            report(true, "ExApps listener \(address) accepts connections")
            guard status == nil else { continue }
            switch get(Upstream(address: local), "/exapps/app_api/harp/status", headers: [("harp-shared-key", key)]) {
            case .success(let response) where response.status == 200:
                status = (try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any]
                report(true, "the running harp accepts the shared key")
            case .success(let response) where response.status == 401:
                report(false, "the running harp refuses this shared key (401): it was started with another HP_SHARED_KEY")
            case .success(let response):
                report(false, "the running harp answers its status with \(response.status): is it harp, and this version?")
            case .failure(let error):
                report(false, "the running harp does not answer (\(error)); if it banned this host, wait for ban_window")
            }
        }
        if let keys = status?["shared_key"] as? [String: Any] {
            let refused = keys["refused_calls"] as? Int ?? 0
            if refused > 0, let last = keys["last_refused"] as? [String: Any] {
                report(false, """
                    \(refused) call\(refused == 1 ? "" : "s") to harp came with a wrong harp-shared-key (the last from \(last["from"] ?? "?"), \
                    \(last["seconds_ago"] ?? "?") s ago): the deploy daemon's "HaRP shared key" in Nextcloud must equal HP_SHARED_KEY
                    """)
            } else {
                report(true, "no call to harp came with a wrong harp-shared-key")
            }
            if let ago = keys["nextcloud_refused_seconds_ago"] as? Int {
                report(false, "Nextcloud refused the running harp's key \(ago) s ago (exapp-meta 401): HP_SHARED_KEY must equal the deploy daemon's \"HaRP shared key\"")
            }
        }
        if let frp {
            let local = Self.local(frp.listen)
            report(Self.accepts(local), Self.accepts(local) ? "FRP listener \(frp.listen) accepts connections"
                   : "FRP listener \(frp.listen): nothing listens; is `harp serve` running with the frp plugin?")
            if frp.tls != .off {
                for finding in CertificateCheck.check(directory: frp.certDir, mutual: frp.tls == .mutual) { report(finding.ok, finding.text) }
            }
        }

        // Every ExApp the running harp knows: Nextcloud's view of the key, and its tunnel.
        let apps = status?["apps"] as? [[String: Any]] ?? []
        let tunnels = Dictionary(uniqueKeysWithValues: (status?["tunnels"] as? [[String: Any]] ?? []).compactMap { tunnel -> (Int, String)? in
            guard let port = tunnel["port"] as? Int else { return nil }
            return (port, "\(tunnel["name"] as? String ?? "?") from \(tunnel["client"] as? String ?? "?")")
        })
        if status != nil && apps.isEmpty {
            print("      no ExApp known yet: apps appear once AppAPI enables them (/exapp_storage) or after their first request")
        }
        for app in apps {
            guard let id = app["id"] as? String, let host = app["host"] as? String, let port = app["port"] as? Int else { continue }
            if let nextcloud {
                switch get(nextcloud, url.target("exapp-meta", appID: id), headers: [("Host", url.host), ("harp-shared-key", key)]) {
                case .success(let response) where response.status == 200:
                    report(true, "\(id): Nextcloud accepts the shared key")
                case .success(let response) where response.status == 401:
                    report(false, "\(id): Nextcloud refuses the shared key (or no longer knows the app): the daemon's --harp_shared_key must equal HP_SHARED_KEY")
                case .success(let response):
                    report(false, "\(id): Nextcloud answers exapp-meta with \(response.status)")
                case .failure(let error):
                    report(false, "\(id): exapp-meta failed (\(error))")
                }
            }
            if host == "127.0.0.1" || host == "localhost" {
                let tunnelable = frp?.allowPorts.contains { $0.range.contains(port) } ?? false
                if let tunnel = tunnels[port] {
                    report(true, "\(id): tunnel on port \(port) (\(tunnel))")
                } else if Self.accepts(.ipv4(host: UInt32(0x7f000001).bigEndian, port: UInt16(clamping: port))) {
                    // Something on this host listens there itself: a direct ExApp, not a missing frpc.
                    report(true, "\(id): direct at 127.0.0.1:\(port) (no tunnel; it listens on this host)")
                } else if tunnelable {
                    report(false, "\(id): no frpc is connected for port \(port): start the ExApp's container; its frpc log says why it cannot log in (key, certificate, port)")
                } else {
                    report(false, "\(id): nothing listens at 127.0.0.1:\(port), outside frp's allow_ports (no tunnel can bring it): start the ExApp")
                }
            } else {
                report(app["resolved"] as? Bool == true, app["resolved"] as? Bool == true ? "\(id): direct at \(host):\(port)"
                       : "\(id): its host \(host) does not resolve from harp")
            }
        }
        return failures
    }

    /// A listen address as a place to connect to (0.0.0.0 and :: mean this host).
    static func local(_ address: SocketAddress) -> SocketAddress {
        switch address {
        case .ipv4(let host, let port) where host == 0: .ipv4(host: UInt32(0x7f000001).bigEndian, port: port)
        case .ipv6(let host, let port) where host.allSatisfy({ $0 == 0 }): .ipv6(host: Array(repeating: 0, count: 15) + [1], port: port)
        default: address
        }
    }

    /// Whether something accepts a TCP connection at `address` within 2 s.
    static func accepts(_ address: SocketAddress) -> Bool {
        let fd = socket(Int32(address.family), Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var storage = sockaddr_storage()
        return withUnsafeMutableBytes(of: &storage) { raw in
            let length = address.write(to: raw.baseAddress!)
            return connect(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length) == 0
        }
    }

    /// Runs `body` on `loop` and waits for it (the command's thread is not a loop).
    static func wait<T: Sendable>(on loop: EventLoop, _ body: @escaping @Sendable () async -> T) -> T {
        let done = DispatchSemaphore(value: 0)
        let box = ResultBox<T>()
        loop.spawn {
            box.value = await body()
            done.signal()
        }
        done.wait()
        return box.value!
    }

    private final class ResultBox<T>: @unchecked Sendable {
        // @unchecked Sendable: written by the loop task before it signals, read after the wait.
        var value: T?
    }
}
