import HarpKernel

/// The `[storage]` section (the `p2p` plugin's; the CRDT plugin reads it too).
public struct StorageConfiguration: Codable, Sendable {
    /// A configured peer: `<node id>@host:port`.
    public struct Peer: Codable, Sendable, CustomStringConvertible {
        public let id: NodeID
        public let address: SocketAddress

        public init(parsing text: String) throws(ConfigValueProblem) {
            guard let at = text.firstIndex(of: "@"), let id = NodeID(parsing: String(text[..<at])) else {
                throw ConfigValueProblem("expected <node id>@host:port, the ID as `harp storage id` prints it")
            }
            do {
                address = try SocketAddress(parsing: String(text[text.index(after: at)...]))
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

    public init() {
        dir = "/var/lib/harp"
        folder = "/srv/harp/folder"
        listen = .ipv4(host: 0, port: 8790)
        peers = []
        uploadRate = 0
        downloadRate = 0
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case dir, folder, listen, peers, uploadRate = "upload_rate", downloadRate = "download_rate"
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
        self = d
        for (key, value) in [("upload_rate", uploadRate), ("download_rate", downloadRate)] where value < 0 {
            throw ConfigError.invalid(key: "storage.\(key)", value: "\(value)", reason: "expected bytes per second, 0 for no limit")
        }
        if dir.isEmpty { throw ConfigError.invalid(key: "storage.dir", value: "\"\"", reason: "expected a directory") }
        if folder.isEmpty { throw ConfigError.invalid(key: "storage.folder", value: "\"\"", reason: "expected a directory") }
    }
}
