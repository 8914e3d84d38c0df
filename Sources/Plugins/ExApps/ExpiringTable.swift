import HarpKernel

/// Entries that expire, keyed by text an attacker may choose (app ids, session cookies), with
/// a hard cap. Expired entries go when the table reaches `capacity`; if it is still full then
/// (a flood of distinct keys, all fresh), it is emptied — the cost is only Nextcloud calls that
/// caching would have saved. The next cleanup waits until `capacity` more entries came, so a
/// flood costs O(1) per insert: pruning on every insert once full made a flood of random app
/// ids drop harp from 12k to 40 req/s (hostile probe).
///
/// Not thread-safe: its owner keeps it behind a mutex.
struct ExpiringTable<Value> {
    private var entries: [String: (value: Value, until: UInt64)] = [:]
    private let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
    }

    /// The live value for `key` (an expired one is removed).
    mutating func value(_ key: String, now: UInt64) -> Value? {
        guard let entry = entries[key] else { return nil }
        if entry.until > now { return entry.value }
        entries[key] = nil
        return nil
    }

    mutating func insert(_ key: String, _ value: Value, until: UInt64, now: UInt64) {
        if entries.count >= capacity && entries[key] == nil {
            entries = entries.filter { $0.value.until > now }
            if entries.count >= capacity / 2 { entries.removeAll(keepingCapacity: true) }
        }
        entries[key] = (value, until)
    }

    mutating func remove(_ key: String) { entries[key] = nil }

    var count: Int { entries.count }
}
