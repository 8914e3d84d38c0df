/// Bytes received but not yet consumed, in one fixed allocation per connection (so that
/// reading a request head never allocates). Data lives in `[readIndex, writeIndex)`.
final class ConnectionBuffer {
    let storage: UnsafeMutableRawBufferPointer
    private(set) var readIndex = 0
    private(set) var writeIndex = 0

    init(capacity: Int) {
        storage = .allocate(byteCount: capacity, alignment: 16)
    }

    deinit { storage.deallocate() }

    var count: Int { writeIndex - readIndex }
    var isEmpty: Bool { readIndex == writeIndex }

    var readable: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: storage[readIndex..<writeIndex]) }

    /// Free space after the data, moving the data to the front first if that makes room.
    var writable: UnsafeMutableRawBufferPointer {
        if writeIndex == storage.count && readIndex > 0 { compact() }
        return UnsafeMutableRawBufferPointer(rebasing: storage[writeIndex...])
    }

    func didWrite(_ count: Int) { writeIndex += count }

    func consume(_ count: Int) {
        readIndex += count
        if readIndex == writeIndex { readIndex = 0; writeIndex = 0 }
    }

    func compact() {
        guard readIndex > 0 else { return }
        let length = count
        if length > 0 { storage.baseAddress!.copyMemory(from: storage.baseAddress! + readIndex, byteCount: length) }
        readIndex = 0
        writeIndex = length
    }
}
