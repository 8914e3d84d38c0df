import BlockExchange

/// The two kinds of metadata operation. Every one is immutable and idempotent; a replica's
/// state is a function of the set of operations it has applied, whatever their order.
public enum TreeOperation: Hashable, Sendable {
    /// Create (a new ID), rename (same parent, new name), move, or delete (under TRASH).
    case move(Move)
    /// A file's content changed: its new root, written starting from `base`.
    case version(Version)

    public struct Move: Hashable, Sendable {
        public let timestamp: HLCTimestamp
        public let item: ItemID
        public let parent: ItemID
        public let name: String
        public let isDirectory: Bool

        public init(timestamp: HLCTimestamp, item: ItemID, parent: ItemID, name: String, isDirectory: Bool) {
            self.timestamp = timestamp
            self.item = item
            self.parent = parent
            self.name = name
            self.isDirectory = isDirectory
        }
    }

    public struct Version: Hashable, Sendable {
        public let timestamp: HLCTimestamp
        public let item: ItemID
        public let root: ChunkID
        public let size: Int
        public let mtime: Int64
        /// The root the writer started from (nil for a file's first content).
        public let base: ChunkID?
        /// Permission bits (owner, group, other rwx): what the file's mode was where it was made.
        public let mode: UInt16

        public init(timestamp: HLCTimestamp, item: ItemID, root: ChunkID, size: Int, mtime: Int64, base: ChunkID?, mode: UInt16 = 0o644) {
            self.timestamp = timestamp
            self.item = item
            self.root = root
            self.size = size
            self.mtime = mtime
            self.base = base
            self.mode = mode
        }
    }

    public var timestamp: HLCTimestamp {
        switch self {
        case .move(let move): move.timestamp
        case .version(let version): version.timestamp
        }
    }

    public var item: ItemID {
        switch self {
        case .move(let move): move.item
        case .version(let version): version.item
        }
    }
}
