import BlockExchange
import HarpKernel

/// The `[crdt]` section: how the metadata sync treats clocks and the folder.
public struct MetadataConfiguration: Codable, Sendable {
    /// Remote operations stamped further ahead of local time are held back and reported.
    public var maxClockSkew: ConfigDuration
    /// The folder is walked this often even without inotify events (a missed event, a
    /// network file system).
    public var rescanInterval: ConfigDuration
    /// A file must stay unchanged this long before a version is cut (a file being written).
    public var stableAfter: ConfigDuration
    /// The version store's retention (`VersionRetention`): per file, this many replaced
    /// versions are kept, none longer than `keepVersionsFor`, all of them within
    /// `versionStoreMax`.
    public var keepVersions: Int
    public var keepVersionsFor: ConfigDuration
    public var versionStoreMax: StorageConfiguration.DiskShare

    public init() {
        maxClockSkew = .seconds(300)
        rescanInterval = .seconds(30)
        stableAfter = .seconds(2)
        keepVersions = 10
        keepVersionsFor = .seconds(30 * 86_400)
        versionStoreMax = .percent(10)
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case maxClockSkew = "max_clock_skew", rescanInterval = "rescan_interval", stableAfter = "stable_after"
        case keepVersions = "keep_versions", keepVersionsFor = "keep_versions_for", versionStoreMax = "version_store_max"
    }

    public init(from decoder: any Decoder) throws {
        var d = MetadataConfiguration()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        d.maxClockSkew = try c.decodeIfPresent(ConfigDuration.self, forKey: .maxClockSkew) ?? d.maxClockSkew
        d.rescanInterval = try c.decodeIfPresent(ConfigDuration.self, forKey: .rescanInterval) ?? d.rescanInterval
        d.stableAfter = try c.decodeIfPresent(ConfigDuration.self, forKey: .stableAfter) ?? d.stableAfter
        d.keepVersions = try c.decodeIfPresent(Int.self, forKey: .keepVersions) ?? d.keepVersions
        d.keepVersionsFor = try c.decodeIfPresent(ConfigDuration.self, forKey: .keepVersionsFor) ?? d.keepVersionsFor
        d.versionStoreMax = try c.decodeIfPresent(StorageConfiguration.DiskShare.self, forKey: .versionStoreMax) ?? d.versionStoreMax
        self = d
        if !(0...1_000_000).contains(keepVersions) {
            throw ConfigError.invalid(key: "crdt.keep_versions", value: "\(keepVersions)", reason: "expected 0 to 1000000 versions per file")
        }
        if maxClockSkew.duration < .seconds(1) {
            throw ConfigError.invalid(key: "crdt.max_clock_skew", value: "\(maxClockSkew)", reason: "expected at least 1s (clocks of real nodes differ by more)")
        }
        if rescanInterval.duration < .milliseconds(100) {
            throw ConfigError.invalid(key: "crdt.rescan_interval", value: "\(rescanInterval)", reason: "expected at least 100ms")
        }
        if stableAfter.duration > .seconds(3600) {
            throw ConfigError.invalid(key: "crdt.stable_after", value: "\(stableAfter)", reason: "expected at most 1h")
        }
    }
}
