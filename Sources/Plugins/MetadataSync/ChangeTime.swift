import BlockExchange

/// The timestamp of a local change the node finds after it happened — at start-up, after the
/// node was stopped for days, or by a scan that came later — so that "later wins" means later
/// in fact, not later noticed: the time the change happened as far as the node can tell (a
/// file's modification time for its bytes, a rename's status-change time, a delete's parent
/// directory's modification time), never at or before `after` (what the node had already
/// recorded: the item's newest version, or the node's clock when it started) and never past
/// now.
///
/// The counter is in the upper half, which the live clock does not reach within one
/// millisecond, so a found change does not take a timestamp the node gave before.
struct ChangeTime {
    static let foundCounters: UInt32 = 1 << 31

    let node: NodeID
    private var serial: UInt32 = 0

    init(node: NodeID) {
        self.node = node
    }

    /// A timestamp for a change that happened at `happened` (ms), found at `now` (ms).
    mutating func stamp(happened: UInt64, after floor: HLCTimestamp?, now: UInt64) -> HLCTimestamp {
        serial = serial &+ 1
        let counter = Self.foundCounters | (serial & (Self.foundCounters - 1))
        var wall = min(happened, now)
        if let floor, HLCTimestamp(wall: wall, counter: counter, node: node) <= floor {
            wall = floor.wall + 1
        }
        return HLCTimestamp(wall: wall, counter: counter, node: node)
    }
}
