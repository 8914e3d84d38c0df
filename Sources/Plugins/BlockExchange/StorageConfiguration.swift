import HarpKernel

/// The `[storage]` section (the `p2p` plugin's; the CRDT plugin reads it too).
public struct StorageConfiguration: Codable, Sendable {
    /// A configured peer: `<node id>@host:port`.
    public struct Peer: Codable, Sendable, CustomStringConvertible {
        public let id: NodeID
        /// Looked up at each connection attempt (a name that does not resolve at start is no error).
        public let address: NamedAddress

        public init(parsing text: String) throws(ConfigValueProblem) {
            guard let at = text.firstIndex(of: "@"), let id = NodeID(parsing: String(text[..<at])) else {
                throw ConfigValueProblem("expected <node id>@host:port, the ID as `harp storage id` prints it")
            }
            do {
                address = try NamedAddress(parsing: String(text[text.index(after: at)...]))
            } catch {
                throw ConfigValueProblem("\(error.reason); expected <node id>@host:port")
            }
            self.id = id
        }

        public init(from decoder: any Decoder) throws {
            try self.init(parsing: try decoder.singleValueContainer().decode(String.self))
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(description)
        }

        public var description: String { "\(id)@\(address)" }
    }

    /// Identity, SQLite index, state and the CLI's unix socket.
    public var dir: String
    /// The synced folder.
    public var folder: String
    public var listen: SocketAddress
    public var peers: [Peer]
    /// Bytes per second, 0 = unlimited (token buckets, per peer and global).
    public var uploadRate: Int
    public var downloadRate: Int
    /// Room a fetch must leave free on the folder's file system: a percentage of it
    /// (`"1%"`) or bytes (`"1GiB"`, `"500MB"`). The default: 1%, at most 1 GiB.
    public var minFree: DiskShare
    /// A partial download nobody resumed for this long is removed (with its record).
    public var partialTTL: ConfigDuration

    public init() {
        dir = "/var/lib/harp"
        folder = "/srv/harp/folder"
        listen = .ipv4(host: 0, port: 8790)
        peers = []
        uploadRate = 0
        downloadRate = 0
        minFree = .default
        partialTTL = .seconds(7 * 86_400)
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case dir, folder, listen, peers, uploadRate = "upload_rate", downloadRate = "download_rate"
        case minFree = "min_free", partialTTL = "partial_ttl"
    }

    /// A share of a file system, or bytes (`[storage] min_free`, `[crdt] version_store_max`).
    public enum DiskShare: Codable, Sendable, Equatable, CustomStringConvertible {
        case percent(Double)
        case bytes(Int64)
        /// `min_free`'s default: 1% of the file system, at most 1 GiB.
        case `default`

        /// The bytes to keep free on a file system of `total` bytes.
        public func bytes(of total: Int64) -> Int64 {
            switch self {
            case .percent(let share): Int64(Double(total) * share / 100)
            case .bytes(let bytes): bytes
            case .default: min(total / 100, 1 << 30)
            }
        }

        public init(from decoder: any Decoder) throws {
            let text = try decoder.singleValueContainer().decode(String.self)
            let allowed = "expected a share like \"1%\" or a size like \"1GiB\", \"500MB\", \"0\""
            if text.hasSuffix("%") {
                guard let share = Double(text.dropLast()), (0...50).contains(share) else { throw ConfigValueProblem(allowed) }
                self = .percent(share)
                return
            }
            let units: [(String, Int64)] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("GB", 1_000_000_000), ("MB", 1_000_000),
                                            ("kB", 1000), ("B", 1), ("", 1)]
            for (suffix, scale) in units where text.hasSuffix(suffix) {
                if let number = Double(text.dropLast(suffix.count)), number >= 0, number * Double(scale) < 9e18 {
                    self = .bytes(Int64(number * Double(scale)))
                    return
                }
            }
            throw ConfigValueProblem(allowed)
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(description)
        }

        public var description: String {
            switch self {
            case .percent(let share): "\(share == share.rounded() ? String(Int(share)) : String(share))%"
            case .bytes(let bytes): "\(bytes)B"
            case .default: "1%"
            }
        }
    }

    public init(from decoder: any Decoder) throws {
        var d = StorageConfiguration()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        d.dir = try c.decodeIfPresent(String.self, forKey: .dir) ?? d.dir
        d.folder = try c.decodeIfPresent(String.self, forKey: .folder) ?? d.folder
        d.listen = try c.decodeIfPresent(SocketAddress.self, forKey: .listen) ?? d.listen
        d.peers = try c.decodeIfPresent([Peer].self, forKey: .peers) ?? []
        d.uploadRate = try c.decodeIfPresent(Int.self, forKey: .uploadRate) ?? 0
        d.downloadRate = try c.decodeIfPresent(Int.self, forKey: .downloadRate) ?? 0
        d.minFree = try c.decodeIfPresent(DiskShare.self, forKey: .minFree) ?? d.minFree
        d.partialTTL = try c.decodeIfPresent(ConfigDuration.self, forKey: .partialTTL) ?? d.partialTTL
        self = d
        for (key, value) in [("upload_rate", uploadRate), ("download_rate", downloadRate)] where value < 0 {
            throw ConfigError.invalid(key: "storage.\(key)", value: "\(value)", reason: "expected bytes per second, 0 for no limit")
        }
        if dir.isEmpty { throw ConfigError.invalid(key: "storage.dir", value: "\"\"", reason: "expected a directory") }
        if folder.isEmpty { throw ConfigError.invalid(key: "storage.folder", value: "\"\"", reason: "expected a directory") }
    }
}
