import CShims
import Glibc

/// Where to listen or connect: an IPv4/IPv6 address with a port, or a Unix socket path.
/// Parsed from config strings: `127.0.0.1:7000`, `[::1]:7000`, `localhost:7000`, `unix:/run/app.sock`.
public enum SocketAddress: Hashable, Sendable, CustomStringConvertible {
    case ipv4(host: UInt32, port: UInt16)  // host in network byte order
    case ipv6(host: [UInt8], port: UInt16)
    case unix(path: String)

    /// What a config value may look like; quoted in every parse error.
    public static let allowedForms = "an address like 127.0.0.1:7000, [::1]:7000, localhost:7000 or unix:/path/to/socket"

    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public let input: String
        public let reason: String
        public var description: String { "\"\(input)\" is not a valid address (\(reason)); expected \(SocketAddress.allowedForms)" }
    }

    public init(parsing text: String) throws(ParseError) {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { throw ParseError(input: text, reason: "empty socket path") }
            guard path.utf8.count < MemoryLayout.size(ofValue: sockaddr_un().sun_path) else {
                throw ParseError(input: text, reason: "socket path longer than 107 bytes")
            }
            self = .unix(path: path)
            return
        }
        guard let colon = text.lastIndex(of: ":") else {
            throw ParseError(input: text, reason: "missing :port")
        }
        var host = String(text[..<colon])
        let portText = text[text.index(after: colon)...]
        guard let port = UInt16(portText), port > 0 else {
            throw ParseError(input: text, reason: "port must be 1-65535")
        }
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
            var bytes = [UInt8](repeating: 0, count: 16)
            guard inet_pton(AF_INET6, host, &bytes) == 1 else {
                throw ParseError(input: text, reason: "bad IPv6 address")
            }
            self = .ipv6(host: bytes, port: port)
            return
        }
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            self = .ipv4(host: v4.s_addr, port: port)
            return
        }
        guard !host.isEmpty, !host.contains(":") else {
            throw ParseError(input: text, reason: "IPv6 addresses need brackets")
        }
        self = try Self.resolve(host: host, port: port, input: text)
    }

    /// Name lookup happens once, at config time, never on a loop thread.
    private static func resolve(host: String, port: UInt16, input: String) throws(ParseError) -> SocketAddress {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &result) == 0, let first = result else {
            throw ParseError(input: input, reason: "cannot resolve host \(host)")
        }
        defer { freeaddrinfo(result) }
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let info = entry {
            if info.pointee.ai_family == AF_INET {
                let sin = UnsafeRawPointer(info.pointee.ai_addr).load(as: sockaddr_in.self)
                return .ipv4(host: sin.sin_addr.s_addr, port: port)
            }
            entry = info.pointee.ai_next
        }
        let sin6 = UnsafeRawPointer(first.pointee.ai_addr).load(as: sockaddr_in6.self)
        return .ipv6(host: withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }, port: port)
    }

    public var family: Int32 {
        switch self {
        case .ipv4: AF_INET
        case .ipv6: AF_INET6
        case .unix: AF_UNIX
        }
    }

    public var port: UInt16? {
        switch self {
        case .ipv4(_, let port), .ipv6(_, let port): port
        case .unix: nil
        }
    }

    /// Writes the sockaddr into `storage` (at least `sockaddr_storage` bytes); returns its length.
    public func write(to storage: UnsafeMutableRawPointer) -> socklen_t {
        switch self {
        case .ipv4(let host, let port):
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            sin.sin_addr.s_addr = host
            storage.storeBytes(of: sin, as: sockaddr_in.self)
            return socklen_t(MemoryLayout<sockaddr_in>.size)
        case .ipv6(let host, let port):
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &sin6.sin6_addr) { $0.copyBytes(from: host) }
            storage.storeBytes(of: sin6, as: sockaddr_in6.self)
            return socklen_t(MemoryLayout<sockaddr_in6>.size)
        case .unix(let path):
            var sun = sockaddr_un()
            sun.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &sun.sun_path) { raw in
                raw.copyBytes(from: path.utf8)
                raw[path.utf8.count] = 0
            }
            storage.storeBytes(of: sun, as: sockaddr_un.self)
            return socklen_t(MemoryLayout<sockaddr_un>.size)
        }
    }

    /// The address a socket is bound to (to learn the port the kernel chose for port 0).
    public static func local(of fd: Int32) -> SocketAddress? {
        decode { getsockname(fd, $0, $1) == 0 }
    }

    /// Reads a sockaddr filled in by `fill` (getsockname, getpeername).
    static func decode(_ fill: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Bool) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { fill($0, &length) }
        }
        guard ok else { return nil }
        return withUnsafeBytes(of: storage) { raw in
            switch Int32(storage.ss_family) {
            case AF_INET:
                let sin = raw.load(as: sockaddr_in.self)
                return .ipv4(host: sin.sin_addr.s_addr, port: UInt16(bigEndian: sin.sin_port))
            case AF_INET6:
                let sin6 = raw.load(as: sockaddr_in6.self)
                return .ipv6(host: withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }, port: UInt16(bigEndian: sin6.sin6_port))
            case AF_UNIX:
                return .unix(path: "")
            default:
                return nil
            }
        }
    }

    private static func string(_ chars: [CChar]) -> String {
        String(decoding: chars.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public var description: String {
        switch self {
        case .ipv4(let host, let port):
            var addr = in_addr(s_addr: host)
            var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
            inet_ntop(AF_INET, &addr, &text, socklen_t(text.count))
            return "\(Self.string(text)):\(port)"
        case .ipv6(let host, let port):
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            inet_ntop(AF_INET6, host, &text, socklen_t(text.count))
            return "[\(Self.string(text))]:\(port)"
        case .unix(let path):
            return "unix:\(path)"
        }
    }
}
