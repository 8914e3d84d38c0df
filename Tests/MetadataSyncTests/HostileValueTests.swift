import BlockExchange
import HarpKernel
import HarpTestSupport
@testable import MetadataSync
import Testing

/// Random operations with the values a hostile peer would pick — names of every shape,
/// sequences, clocks and counters at their limits — through the real decoder and a replica:
/// what decodes is within the rules, and nothing traps. Seeded; the seed is printed.
@Suite("metadata values from a hostile peer")
struct HostileValueTests {
    static let awkwardNames: [[UInt8]] = [
        [], Array(".".utf8), Array("..".utf8), Array("../x".utf8), Array("a/b".utf8), Array("/abs".utf8), [0x61, 0x00, 0x62],
        Array(".harp-versions".utf8), Array(".harp-staging".utf8), [0xFF, 0xFE], [0xC0, 0xAF], Array(repeating: 0x61, count: 256),
        Array(repeating: 0x61, count: 255), Array("ok".utf8), Array("ünïcode".utf8), Array("x".utf8),
    ]

    @Test("16,000 random records: every one that decodes has a valid name and values in range; a replica applies them without trapping",
          arguments: [20_261_207 as UInt64, 7, 65_535])
    func randomRecords(seed: UInt64) throws {
        print("seed \(seed)")
        var generator = SeededGenerator(seed: seed)
        let node = NodeID(bytes: (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) })
        var replica = Replica(node: NodeID(bytes: Array(repeating: 1, count: 32)))
        var applied: [LoggedOperation] = []
        let extremes: [UInt64] = [0, 1, 2, 1 << 47, 1 << 48, (1 << 48) + 1, .max - 1, .max]
        for _ in 0..<16_000 {
            var writer = ByteWriter()
            let isMove = Bool.random(using: &generator)
            let sequence = Bool.random(using: &generator) ? extremes.randomElement(using: &generator)! : UInt64.random(in: 1...100, using: &generator)
            let wall = Bool.random(using: &generator) ? extremes.randomElement(using: &generator)! : 1_000_000
            let counter: UInt32 = Bool.random(using: &generator) ? .max : UInt32.random(in: 0...5, using: &generator)
            writer.u8(isMove ? 1 : 2)
            writer.u64(sequence)
            writer.u64(wall)
            writer.u32(counter)
            writer.raw(node.bytes)
            writer.raw(ItemID(high: UInt64.random(in: 0...3, using: &generator), low: UInt64.random(in: 0...3, using: &generator)).bytes)
            if isMove {
                writer.raw(ItemID(high: UInt64.random(in: 0...3, using: &generator), low: UInt64.random(in: 0...3, using: &generator)).bytes)
                writer.u8(UInt8.random(in: 0...1, using: &generator))
                writer.prefixed16(Self.awkwardNames.randomElement(using: &generator)!)
            } else {
                writer.raw((0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) })
                writer.u64(extremes.randomElement(using: &generator)!)
                writer.i64(Int64.random(in: .min ... .max, using: &generator))
                writer.u16(UInt16.random(in: 0...0o1777, using: &generator))
                writer.u8(0)
            }
            writer.u8(0)
            guard let decoded = try? OperationCodec.decode(writer.bytes) else { continue }
            #expect(decoded.count == 1)
            let logged = decoded[0]
            #expect((1...OperationCodec.maxSequence).contains(logged.sequence), "seed \(seed)")
            #expect(logged.operation.timestamp.wall <= OperationCodec.maxWall, "seed \(seed)")
            switch logged.operation {
            case .move(let move): #expect(SyncedName.isValid(move.name), "seed \(seed): \(move.name.debugDescription)")
            case .version(let version): #expect(version.mode <= 0o777 && version.size >= 0, "seed \(seed)")
            }
            applied.append(logged)
        }
        #expect(!applied.isEmpty, "seed \(seed): some records must be valid")
        replica.apply(applied)
        // The node's own next operations after a counter at its limit: time moves on.
        for _ in 0..<3 {
            let made = replica.local(now: 1_000_000) { .move(.init(timestamp: $0, item: .random(using: &generator), parent: .root, name: "n", isDirectory: true)) }
            #expect(made.operation.timestamp.wall >= 1_000_000)
        }
        // No cycle whatever the moves (an item may sit under a parent nobody placed: moves do
        // not need their parent to exist); a walk up from every item ends.
        for item in replica.tree.placements.keys { _ = replica.tree.isAncestor(.trash, of: item) }
    }
}
