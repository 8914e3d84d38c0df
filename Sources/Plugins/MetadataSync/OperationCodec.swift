import BlockExchange

/// The binary form of a logged operation, for the SQLite log and the wire (batches are
/// deflated on the wire). Big-endian integers:
///
///     kind u8 (1 move, 2 version) · sequence u64 · wall u64 · counter u32 · node [32] · item [16]
///     move:    parent [16] · directory u8 · name length u16 · name (UTF-8)
///     version: root [32] · size u64 · mtime i64 · has base u8 · base [32]?
///
/// The origin is the timestamp's node (an operation is stamped where it is made).
enum OperationCodec {
    static func encode(_ logged: LoggedOperation, into out: inout [UInt8]) {
        let timestamp = logged.operation.timestamp
        switch logged.operation {
        case .move: out.append(1)
        case .version: out.append(2)
        }
        append(logged.sequence, to: &out)
        append(timestamp.wall, to: &out)
        append(UInt64(timestamp.counter), bytes: 4, to: &out)
        out += timestamp.node.bytes
        out += logged.operation.item.bytes
        switch logged.operation {
        case .move(let move):
            encode(ReplicatedTree.Placement(parent: move.parent, name: move.name, isDirectory: move.isDirectory), into: &out)
        case .version(let version):
            out += version.root.bytes
            append(UInt64(version.size), to: &out)
            append(UInt64(bitPattern: version.mtime), to: &out)
            if let base = version.base {
                out.append(1)
                out += base.bytes
            } else {
                out.append(0)
            }
        }
    }

    static func encode(_ batch: [LoggedOperation]) -> [UInt8] {
        var out: [UInt8] = []
        for logged in batch { encode(logged, into: &out) }
        return out
    }

    /// Decodes a run of operations; nil when the bytes are not exactly that (a truncated or
    /// corrupt record: the whole batch is refused, never half applied).
    static func decode(_ bytes: [UInt8]) -> [LoggedOperation]? {
        var reader = ByteReader(bytes: bytes)
        var out: [LoggedOperation] = []
        while !reader.atEnd {
            guard let kind = reader.byte(), let sequence = reader.integer(8), let wall = reader.integer(8), let counter = reader.integer(4),
                  let node = reader.take(32), let item = reader.item() else { return nil }
            let timestamp = HLCTimestamp(wall: wall, counter: UInt32(counter), node: NodeID(bytes: node))
            let operation: TreeOperation
            switch kind {
            case 1:
                guard let placement = reader.placement() else { return nil }
                operation = .move(.init(timestamp: timestamp, item: item, parent: placement.parent, name: placement.name,
                                        isDirectory: placement.isDirectory))
            case 2:
                guard let root = reader.take(32), let size = reader.integer(8), let mtime = reader.integer(8), let hasBase = reader.byte() else { return nil }
                var base: ChunkID?
                if hasBase == 1 {
                    guard let bytes = reader.take(32) else { return nil }
                    base = ChunkID(bytes: bytes)
                }
                operation = .version(.init(timestamp: timestamp, item: item, root: ChunkID(bytes: root), size: Int(truncatingIfNeeded: size),
                                           mtime: Int64(bitPattern: mtime), base: base))
            default:
                return nil
            }
            out.append(LoggedOperation(origin: timestamp.node, sequence: sequence, operation: operation))
        }
        return out
    }

    /// A settled placement (`OperationLog`'s settled table): parent [16] · directory u8 ·
    /// name length u16 · name; a deletion is its earlier placement, then wall u64 ·
    /// counter u32 · node [32] of when it was deleted.
    static func encode(_ placement: ReplicatedTree.Placement, into out: inout [UInt8]) {
        out += placement.parent.bytes
        out.append(placement.isDirectory ? 1 : 0)
        let name = Array(placement.name.utf8.prefix(4096))
        append(UInt64(name.count), bytes: 2, to: &out)
        out += name
    }

    static func encode(_ deletion: ReplicatedTree.Deletion) -> [UInt8] {
        var out: [UInt8] = []
        encode(deletion.was, into: &out)
        append(deletion.at.wall, to: &out)
        append(UInt64(deletion.at.counter), bytes: 4, to: &out)
        out += deletion.at.node.bytes
        return out
    }

    static func decodePlacement(_ bytes: [UInt8]) -> ReplicatedTree.Placement? {
        var reader = ByteReader(bytes: bytes)
        guard let placement = reader.placement(), reader.atEnd else { return nil }
        return placement
    }

    static func decodeDeletion(_ bytes: [UInt8]) -> ReplicatedTree.Deletion? {
        var reader = ByteReader(bytes: bytes)
        guard let was = reader.placement(), let wall = reader.integer(8), let counter = reader.integer(4), let node = reader.take(32),
              reader.atEnd else { return nil }
        return ReplicatedTree.Deletion(was: was, at: HLCTimestamp(wall: wall, counter: UInt32(counter), node: NodeID(bytes: node)))
    }

    /// Appends the low `bytes` bytes of `value`, big-endian.
    static func append(_ value: UInt64, bytes: Int = 8, to out: inout [UInt8]) {
        for shift in stride(from: (bytes - 1) * 8, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }
}
