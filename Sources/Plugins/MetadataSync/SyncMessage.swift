import BlockExchange
import HarpKernel

/// The metadata sync's frames inside the p2p sessions, as typed values: each is decoded and
/// checked here (`decode` throws a `SyncRefusal` naming what was wrong), and only then handed
/// to the node — decode, validate, dispatch.
enum SyncMessage: Sendable {
    /// Frame 64: the sender's table of replicas and their vectors (`ReplicaReports`).
    case report(ReplicaReports.Table)
    /// Frame 65: a batch of operations (flag byte, 1 = deflated, then `OperationCodec`s).
    case operations([LoggedOperation])
    /// Frame 66: one part of the sender's settled state, for a node that joined late.
    case settled(SettledPart)

    static let reportType: UInt8 = 64
    static let operationsType: UInt8 = 65
    static let settledType: UInt8 = 66
    /// The largest body of each type (the session refuses longer frames before they are read).
    static let bodyLimits: [UInt8: Int] = [reportType: 4 << 20, operationsType: 4 << 20, settledType: 4 << 20]
    /// A deflated body inflates to at most this.
    static let inflatedLimit = 16 << 20
    /// A batch holds at most about this many operations (a node 10,000 operations behind gets
    /// five), cut only where the origin signed (`OperationChain.signingRun` apart).
    static let batchSize = 2000
    /// Items per settled-state part (about 60 bytes each before deflating).
    static let settledPartSize = 20_000
    /// At most this many parts (5.1 million items): a state claiming more is refused.
    static let maxSettledParts = 256

    static func decode(type: UInt8, body: [UInt8]) throws(SyncRefusal) -> SyncMessage {
        switch type {
        case reportType: return .report(try ReplicaReports.decode(body))
        case operationsType: return .operations(try OperationCodec.decode(try inflate(body)))
        case settledType: return .settled(try SettledPart.decode(try inflate(body)))
        default: throw .malformed("frame type \(type)")
        }
    }

    /// The frame type and body that carry this message.
    var frame: (type: UInt8, body: [UInt8]) {
        switch self {
        case .report(let table): (Self.reportType, ReplicaReports.encode(table))
        case .operations(let batch): (Self.operationsType, Self.deflated(OperationCodec.encode(batch)))
        case .settled(let part): (Self.settledType, Self.deflated(part.encoded))
        }
    }

    static func deflated(_ bytes: [UInt8]) -> [UInt8] {
        if let deflated = Deflate.compressIfSmaller(bytes) { return [1] + deflated }
        return [0] + bytes
    }

    static func inflate(_ body: [UInt8]) throws(SyncRefusal) -> [UInt8] {
        guard let flag = body.first else { throw .malformed("an empty frame") }
        let rest = Array(body.dropFirst())
        switch flag {
        case 0: return rest
        case 1:
            guard let inflated = rest.withUnsafeBytes({ Deflate.decompress($0, limit: inflatedLimit) }) else {
                throw .malformed("a deflated body that does not inflate within 16 MiB")
            }
            return inflated
        default: throw .malformed("flag \(flag)")
        }
    }

    /// Operations in batches of about `batchSize`, each origin's run cut only after a signed
    /// operation, so that every batch can be proven on its own.
    static func batches(_ operations: [LoggedOperation]) -> [[LoggedOperation]] {
        var out: [[LoggedOperation]] = []
        var current: [LoggedOperation] = []
        for (index, logged) in operations.enumerated() {
            current.append(logged)
            let endsRun = logged.proof != nil || index == operations.count - 1 || operations[index + 1].origin != logged.origin
            if current.count >= batchSize && endsRun {
                out.append(current)
                current = []
            }
        }
        if !current.isEmpty { out.append(current) }
        return out
    }

    /// One part of a settled state: flag byte (1 = deflated), then index u32 · total u32 ·
    /// wall u64 · counter u32 · floor count u16 · (origin [32] · sequence u64 · chain [32])… ·
    /// item count u32 · (item [16] · placement length u16 · placement · deletion length u16 ·
    /// deletion)… · operations length u32 · operations (OperationCodec). Every part carries
    /// the floor, its chain hashes and the clock; the receiver takes the state once it has
    /// every part.
    struct SettledPart: Sendable {
        var index: Int
        var total: Int
        var clock: (wall: UInt64, counter: UInt32)
        var settled: Replica.Settled
        /// Operations the sender keeps at or below its floor (versions, moves not settled):
        /// the floor says the receiver holds them, so they come with the state.
        var operations: [LoggedOperation]

        var encoded: [UInt8] {
            var writer = ByteWriter()
            writer.u32(UInt32(index))
            writer.u32(UInt32(total))
            writer.u64(clock.wall)
            writer.u32(clock.counter)
            writer.u16(UInt16(settled.floor.count))
            for (origin, sequence) in settled.floor.sorted(by: { $0.key.bytes.lexicographicallyPrecedes($1.key.bytes) }) {
                writer.raw(origin.bytes)
                writer.u64(sequence)
                writer.raw(settled.floorChains[origin] ?? [UInt8](repeating: 0, count: 32))
            }
            let items = settled.placements.sorted { $0.key < $1.key }
            writer.u32(UInt32(items.count))
            for (item, placement) in items {
                writer.raw(item.bytes)
                writer.prefixed16(OperationCodec.encode(placement))
                writer.prefixed16(settled.deletions[item].map(OperationCodec.encode) ?? [])
            }
            writer.prefixed32(OperationCodec.encode(operations))
            return writer.bytes
        }

        static func decode(_ bytes: [UInt8]) throws(SyncRefusal) -> SettledPart {
            var reader = ByteReader(bytes)
            return try SyncRefusal.decoding {
                let index = Int(try reader.u32()), total = Int(try reader.u32())
                guard index < total, total <= maxSettledParts else {
                    throw SyncRefusal.settled("part \(index) of \(total) (at most \(maxSettledParts) parts)")
                }
                let wall = try reader.u64(), counter = try reader.u32()
                guard wall <= OperationCodec.maxWall else { throw SyncRefusal.settled("clock \(wall) ms") }
                var settled = Replica.Settled()
                for _ in 0..<(try reader.u16()) {
                    let origin = try reader.node(), sequence = try reader.u64(), chain = try reader.take(32)
                    guard sequence <= OperationCodec.maxSequence else { throw SyncRefusal.settled("floor \(sequence) for \(origin)") }
                    settled.floor[origin] = sequence
                    settled.floorChains[origin] = chain
                }
                let count = try reader.u32()
                guard count <= UInt32(settledPartSize) else { throw SyncRefusal.settled("\(count) items in one part") }
                for _ in 0..<count {
                    let item = try reader.item()
                    settled.placements[item] = try OperationCodec.decodePlacement(try reader.prefixed16())
                    let deletion = try reader.prefixed16()
                    if !deletion.isEmpty { settled.deletions[item] = try OperationCodec.decodeDeletion(deletion) }
                }
                let operations = try OperationCodec.decode(try reader.prefixed32())
                guard operations.count <= settledPartSize, reader.atEnd else { throw SyncRefusal.settled("bytes or operations beyond the part") }
                return SettledPart(index: index, total: total, clock: (wall, counter), settled: settled, operations: operations)
            }
        }

        /// A settled state in parts, as `encoded` writes each.
        static func split(_ settled: Replica.Settled, operations: [LoggedOperation], clock: HybridLogicalClock) -> [SettledPart] {
            let items = settled.placements.sorted { $0.key < $1.key }
            let count = max(1, (items.count + settledPartSize - 1) / settledPartSize, (operations.count + settledPartSize - 1) / settledPartSize)
            func slice<T>(_ all: [T], _ part: Int) -> ArraySlice<T> {
                all[min(all.count, part * settledPartSize)..<min(all.count, (part + 1) * settledPartSize)]
            }
            return (0..<count).map { part in
                var piece = Replica.Settled()
                piece.floor = settled.floor
                piece.floorChains = settled.floorChains
                for (item, placement) in slice(items, part) {
                    piece.placements[item] = placement
                    piece.deletions[item] = settled.deletions[item]
                }
                return SettledPart(index: part, total: count, clock: (clock.wall, clock.counter), settled: piece,
                                   operations: Array(slice(operations, part)))
            }
        }

        /// The state and operations of a complete set of parts (any order).
        static func assemble(_ parts: some Collection<SettledPart>) -> (settled: Replica.Settled, operations: [LoggedOperation]) {
            var settled = Replica.Settled()
            settled.floor = parts.first?.settled.floor ?? [:]
            settled.floorChains = parts.first?.settled.floorChains ?? [:]
            for part in parts {
                settled.placements.merge(part.settled.placements) { $1 }
                settled.deletions.merge(part.settled.deletions) { $1 }
            }
            return (settled, parts.flatMap(\.operations))
        }
    }
}

extension PeerLink {
    func send(_ message: SyncMessage) {
        let (type, body) = message.frame
        send(type: type, body: body)
    }
}
