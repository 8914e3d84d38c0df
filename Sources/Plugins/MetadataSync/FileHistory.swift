/// Every content version of every file, by item, in timestamp order. The head is the last;
/// the others stay retrievable. Versions are idempotent: a timestamp seen twice is one version.
public struct FileHistories: Sendable, Equatable {
    public private(set) var versions: [ItemID: [TreeOperation.Version]] = [:]

    public init() {}

    public mutating func apply(_ version: TreeOperation.Version) {
        var list = versions[version.item] ?? []
        // Binary search for the slot; most versions are the newest (appended).
        var low = 0, high = list.count
        while low < high {
            let middle = (low + high) / 2
            if list[middle].timestamp < version.timestamp { low = middle + 1 } else { high = middle }
        }
        if low < list.count, list[low].timestamp == version.timestamp { return }
        list.insert(version, at: low)
        versions[version.item] = list
    }

    public func head(of item: ItemID) -> TreeOperation.Version? { versions[item]?.last }
}
