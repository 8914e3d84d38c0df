import BlockExchange
import HarpKernel

/// The binary form of a logged operation, for the SQLite log and the wire (batches are
/// deflated on the wire). Big-endian integers (`ByteWriter`):
///
///     kind u8 (1 move, 2 version) · sequence u64 · wall u64 · counter u32 · node [32] · item [16]
///     move:    parent [16] · directory u8 · name length u16 · name (UTF-8)
///     version: root [32] · size u64 · mtime i64 · mode u16 · has base u8 · base [32]?
///     proof u8 (0, or 1 then the origin's public key [32] · signature [64])
///
/// Everything before the proof is the operation's `body`, what its origin's chain hashes
/// (`OperationChain`). The origin is the timestamp's node (an operation is stamped where it
/// is made). Decoding checks every value a peer chooses: names (`SyncedName`), sequence,
/// clock, size and mode ranges — so nothing later can trap on arithmetic with them.
enum OperationCodec {
    /// Sequences a node can use: 2^48 operations, far beyond any folder's life, and far from
    /// UInt64's end (a sequence + 1 never overflows).
    static let maxSequence: UInt64 = 1 << 48
    /// Wall-clock milliseconds up to the year 10889: an HLC never gets near UInt64's end.
    static let maxWall: UInt64 = 1 << 48
    /// A file of up to 1 PiB.
    static let maxSize: UInt64 = 1 << 50

    static func body(_ logged: LoggedOperation) -> [UInt8] {
        var writer = ByteWriter(capacity: 128)
        writeBody(logged, into: &writer)
        return writer.bytes
    }

    static func encode(_ logged: LoggedOperation, into writer: inout ByteWriter) {
        writeBody(logged, into: &writer)
        if let proof = logged.proof {
            writer.u8(1)
            writer.raw(proof.publicKey)
            writer.raw(proof.signature)
        } else {
            writer.u8(0)
        }
    }

    static func encode(_ batch: [LoggedOperation]) -> [UInt8] {
        var writer = ByteWriter(capacity: batch.count * 110)
        for logged in batch { encode(logged, into: &writer) }
        return writer.bytes
    }

    private static func writeBody(_ logged: LoggedOperation, into writer: inout ByteWriter) {
        let timestamp = logged.operation.timestamp
        switch logged.operation {
        case .move: writer.u8(1)
        case .version: writer.u8(2)
        }
        writer.u64(logged.sequence)
        writer.u64(timestamp.wall)
        writer.u32(timestamp.counter)
        writer.raw(timestamp.node.bytes)
        writer.raw(logged.operation.item.bytes)
        switch logged.operation {
        case .move(let move):
            writePlace(parent: move.parent, isDirectory: move.isDirectory, name: move.name, into: &writer)
        case .version(let version):
            writer.raw(version.root.bytes)
            writer.u64(UInt64(version.size))
            writer.i64(version.mtime)
            writer.u16(version.mode)
            if let base = version.base {
                writer.u8(1)
                writer.raw(base.bytes)
            } else {
                writer.u8(0)
            }
        }
    }

    /// Decodes a run of operations, each checked; a single bad record refuses the whole run
    /// (a batch is never half applied).
    static func decode(_ bytes: [UInt8]) throws(SyncRefusal) -> [LoggedOperation] {
        var reader = ByteReader(bytes)
        var out: [LoggedOperation] = []
        while !reader.atEnd { out.append(try decodeOne(&reader)) }
        return out
    }

    static func decodeOne(_ reader: inout ByteReader) throws(SyncRefusal) -> LoggedOperation {
        return try SyncRefusal.decoding {
            let kind = try reader.u8()
            let sequence = try reader.u64(), wall = try reader.u64(), counter = try reader.u32()
            let node = NodeID(bytes: try reader.take(32))
            let item = try reader.item()
            guard (1...maxSequence).contains(sequence) else { throw SyncRefusal.malformed("sequence \(sequence) is outside 1…2^48") }
            guard wall <= maxWall else { throw SyncRefusal.malformed("clock \(wall) ms is beyond 2^48") }
            let timestamp = HLCTimestamp(wall: wall, counter: counter, node: node)
            let operation: TreeOperation
            switch kind {
            case 1:
                let placement = try reader.placement(at: timestamp)
                operation = .move(.init(timestamp: timestamp, item: item, parent: placement.parent, name: placement.name,
                                        isDirectory: placement.isDirectory))
            case 2:
                let root = ChunkID(bytes: try reader.take(32))
                let size = try reader.u64(), mtime = try reader.i64(), mode = try reader.u16()
                let base = try reader.u8() == 1 ? ChunkID(bytes: try reader.take(32)) : nil
                guard size <= maxSize else { throw SyncRefusal.malformed("size \(size) is beyond 1 PiB") }
                guard mode <= 0o777 else { throw SyncRefusal.malformed("mode \(String(mode, radix: 8)) has bits beyond 0777") }
                guard item != .root && item != .trash else { throw SyncRefusal.malformed("a version of the \(item) item") }
                operation = .version(.init(timestamp: timestamp, item: item, root: root, size: Int(size), mtime: mtime, base: base, mode: mode))
            default:
                throw SyncRefusal.malformed("operation kind \(kind)")
            }
            var proof: OperationProof?
            if try reader.u8() == 1 {
                proof = OperationProof(publicKey: try reader.take(32), signature: try reader.take(64))
            }
            return LoggedOperation(origin: node, sequence: sequence, operation: operation, proof: proof)
        }
    }

    /// Where a move puts an item: parent [16] · directory u8 · name length u16 · name.
    private static func writePlace(parent: ItemID, isDirectory: Bool, name: String, into writer: inout ByteWriter) {
        writer.raw(parent.bytes)
        writer.bool(isDirectory)
        writer.prefixed16(Array(name.utf8.prefix(Int(UInt16.max))))
    }

    private static func write(_ timestamp: HLCTimestamp, into writer: inout ByteWriter) {
        writer.u64(timestamp.wall)
        writer.u32(timestamp.counter)
        writer.raw(timestamp.node.bytes)
    }

    /// A placement (`OperationLog`'s settled table, settled-state parts): where it is (as a
    /// move writes it), then wall u64 · counter u32 · node [32] of the move that put it
    /// there; a deletion is its earlier placement, then the same of when it was deleted. (A
    /// record written before placements carried their move's time has none: the zero time.)
    static func encode(_ placement: ReplicatedTree.Placement, into writer: inout ByteWriter) {
        writePlace(parent: placement.parent, isDirectory: placement.isDirectory, name: placement.name, into: &writer)
        write(placement.at, into: &writer)
    }

    static func encode(_ placement: ReplicatedTree.Placement) -> [UInt8] {
        var writer = ByteWriter()
        encode(placement, into: &writer)
        return writer.bytes
    }

    static func encode(_ deletion: ReplicatedTree.Deletion) -> [UInt8] {
        var writer = ByteWriter()
        encode(deletion.was, into: &writer)
        write(deletion.at, into: &writer)
        return writer.bytes
    }

    /// The size of an encoded timestamp.
    private static let timestampSize = 8 + 4 + 32

    /// The time of records written before placements carried one: older than every move.
    static let unknownTime = HLCTimestamp(wall: 0, counter: 0, node: NodeID(bytes: [UInt8](repeating: 0, count: 32)))

    static func decodePlacement(_ bytes: [UInt8]) throws(SyncRefusal) -> ReplicatedTree.Placement {
        var reader = ByteReader(bytes)
        return try SyncRefusal.decoding {
            let place = try reader.placement(at: unknownTime)
            let placement = reader.atEnd ? place : try place.placed(at: reader.timestamp())
            guard reader.atEnd else { throw SyncRefusal.malformed("bytes after a placement") }
            return placement
        }
    }

    static func decodeDeletion(_ bytes: [UInt8]) throws(SyncRefusal) -> ReplicatedTree.Deletion {
        var reader = ByteReader(bytes)
        return try SyncRefusal.decoding {
            var was = try reader.placement(at: unknownTime)
            if reader.remaining > timestampSize { was = try was.placed(at: reader.timestamp()) }
            let at = try reader.timestamp()
            guard reader.atEnd else { throw SyncRefusal.malformed("a deletion record") }
            return ReplicatedTree.Deletion(was: was, at: at)
        }
    }
}

extension ReplicatedTree.Placement {
    func placed(at time: HLCTimestamp) -> Self { Self(parent: parent, name: name, isDirectory: isDirectory, at: time) }
}

extension ByteReader {
    mutating func item() throws(Underrun) -> ItemID { ItemID(bytes: try take(16))! }

    mutating func node() throws(Underrun) -> NodeID { NodeID(bytes: try take(32)) }

    /// A timestamp whose clock is within `OperationCodec.maxWall`.
    mutating func timestamp() throws(SyncRefusal) -> HLCTimestamp {
        return try SyncRefusal.decoding {
            let wall = try u64(), counter = try u32(), node = try node()
            guard wall <= OperationCodec.maxWall else { throw SyncRefusal.malformed("clock \(wall) ms is beyond 2^48") }
            return HLCTimestamp(wall: wall, counter: counter, node: node)
        }
    }

    /// Where a move puts an item (its name passes `SyncedName`), placed at `time`.
    mutating func placement(at time: HLCTimestamp) throws(SyncRefusal) -> ReplicatedTree.Placement {
        return try SyncRefusal.decoding {
            let parent = try item(), directory = try u8(), name = try prefixed16()
            switch SyncedName.check(name) {
            case .success(let text): return ReplicatedTree.Placement(parent: parent, name: text, isDirectory: directory == 1, at: time)
            case .failure(let refusal): throw SyncRefusal.name(refusal)
            }
        }
    }
}
