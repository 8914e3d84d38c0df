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
/// millisecond, so a found change does not take a timestamp the node gave before; it carries
/// the time's sub-millisecond part, so changes within one millisecond keep their order as far
/// as the file system tells them apart (Linux stamps files from a coarse clock: two writes on
/// two nodes within a few milliseconds carry one time and are ordered by node ID).
enum ChangeTime {
    static let foundCounters: UInt32 = 1 << 31

    /// A timestamp for a change that happened at `happened` (ns since 1970), found at `now` (ms).
    static func stamp(happened: Int64, after floor: HLCTimestamp?, now: UInt64, node: NodeID) -> HLCTimestamp {
        let nanoseconds = UInt64(max(0, happened))
        var wall = nanoseconds / 1_000_000
        var counter = foundCounters | UInt32(nanoseconds % 1_000_000)
        if wall > now {
            wall = now
            counter = foundCounters
        }
        if let floor, HLCTimestamp(wall: wall, counter: counter, node: node) <= floor {
            wall = floor.wall + 1
            counter = foundCounters
        }
        return HLCTimestamp(wall: wall, counter: counter, node: node)
    }
}
