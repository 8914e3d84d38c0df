/// Why a download does not fit: what it still needs plus `[storage] min_free` against what the
/// file system has. A full disk fails every download alike, so those who report it say it
/// once a minute, not once a file.
public struct DiskShortage: Sendable, Equatable, CustomStringConvertible {
    public let needed: Int64
    public let keptFree: Int64
    public let available: Int64

    public var description: String {
        "no room: \(needed) more bytes needed and \(keptFree) kept free ([storage] min_free), \(available) available"
    }
}
