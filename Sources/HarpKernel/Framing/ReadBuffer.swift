/// Bytes received but not yet consumed: `[readIndex, writeIndex)` of one allocation that is
/// made on first use, starts small and grows (×4) up to `capacity` only while a message
/// needs the room. An idle connection that has not sent anything holds no buffer at all, and
/// one that carried a large head once gives the room back with `shrinkIfIdle()`.
///
/// Loop-confined, like the connection it belongs to.
public final class ReadBuffer {
    /// Most of what this buffer may ever hold (a message larger than this is refused).
    public let capacity: Int
    private let initialSize: Int
    private var storage: UnsafeMutableRawBufferPointer?
    public private(set) var readIndex = 0
    public private(set) var writeIndex = 0

    /// Where first-size allocations come from and go back to, when the owner releases the
    /// buffer between messages (`release()`); nil: the allocator.
    private let pool: BufferPool?

    /// 4 KiB holds a typical request or response head and a small body in one allocation.
    /// A `pool` must be the owner's loop's and hold buffers of `initialSize` bytes.
    public init(capacity: Int, initialSize: Int = 4096, pool: BufferPool? = nil) {
        self.capacity = capacity
        self.initialSize = min(initialSize, capacity)
        precondition(pool == nil || pool!.size == self.initialSize, "a pool of the buffer's first size")
        self.pool = pool
    }

    deinit { storage?.deallocate() }

    public var count: Int { writeIndex - readIndex }
    public var isEmpty: Bool { readIndex == writeIndex }
    /// Whether any memory is held now.
    public var isAllocated: Bool { storage != nil }
    /// The bytes held now (0 before the first use).
    public var allocatedSize: Int { storage?.count ?? 0 }
    /// Whether the allocation is past its first size (`shrinkIfIdle` would free it).
    public var isGrown: Bool { allocatedSize > initialSize }

    public var readable: UnsafeRawBufferPointer {
        guard let storage else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(rebasing: storage[readIndex..<writeIndex])
    }

    /// Free space after the data: allocated on first use, the data moved to the front or the
    /// allocation grown when that makes room. Empty only when `capacity` bytes are buffered.
    public var writable: UnsafeMutableRawBufferPointer {
        guard var current = storage else {
            let fresh = pool?.take() ?? UnsafeMutableRawBufferPointer.allocate(byteCount: initialSize, alignment: 16)
            storage = fresh
            return fresh
        }
        if writeIndex == current.count {
            if readIndex > 0 {
                compact()
            } else if current.count < capacity {
                let grown = UnsafeMutableRawBufferPointer.allocate(byteCount: min(capacity, current.count * 4), alignment: 16)
                grown.baseAddress!.copyMemory(from: current.baseAddress!, byteCount: writeIndex)
                free(current)
                current = grown
                storage = grown
            }
        }
        return UnsafeMutableRawBufferPointer(rebasing: current[writeIndex...])
    }

    /// Makes the allocation at least `size` bytes (at most `capacity`) now, for a reader that
    /// moves bulk data: growth otherwise happens only while one message needs the room, and a
    /// stream of frames consumed as they arrive would be read in `initialSize` pieces.
    public func reserve(_ size: Int) {
        let wanted = min(size, capacity)
        guard (storage?.count ?? 0) < wanted else { return }
        let grown = UnsafeMutableRawBufferPointer.allocate(byteCount: wanted, alignment: 16)
        if let current = storage {
            let length = count
            if length > 0 { grown.baseAddress!.copyMemory(from: current.baseAddress! + readIndex, byteCount: length) }
            free(current)
            readIndex = 0
            writeIndex = length
        }
        storage = grown
    }

    /// After a read of `received` bytes into `room` bytes of `writable`: when it took all of
    /// it, more is probably waiting, and the next read gets ×4 the room (up to `capacity`).
    /// For readers that consume what they read at once (a stream of frames, a chunked body),
    /// whose buffer would otherwise stay at its first 4 KiB.
    public func growIfFilled(_ received: Int, room: Int) {
        if received == room { reserve(allocatedSize * 4) }
    }

    public func didWrite(_ count: Int) {
        assert(count >= 0 && writeIndex + count <= (storage?.count ?? 0), "wrote past the writable space")
        writeIndex += count
    }

    public func consume(_ count: Int) {
        assert(count >= 0 && count <= self.count, "consumed more than was buffered")
        readIndex += count
        if readIndex == writeIndex { readIndex = 0; writeIndex = 0 }
    }

    /// Moves the data to the front of the allocation.
    public func compact() {
        guard readIndex > 0, let storage else { return }
        let length = count
        if length > 0 { storage.baseAddress!.copyMemory(from: storage.baseAddress! + readIndex, byteCount: length) }
        readIndex = 0
        writeIndex = length
    }

    /// Before a long wait: an empty buffer that grew past its initial size is freed (the next
    /// read starts small again), so a connection keeps no message's peak while idle.
    public func shrinkIfIdle() {
        guard isEmpty, let storage, storage.count > initialSize else { return }
        storage.deallocate()
        self.storage = nil
    }

    /// Between messages, for an owner that waits long with the buffer unused (a kept-alive
    /// HTTP connection's response buffer): an empty buffer gives its allocation back, to the
    /// pool when it has its first size.
    public func release() {
        guard isEmpty, let storage else { return }
        free(storage)
        self.storage = nil
        readIndex = 0
        writeIndex = 0
    }

    private func free(_ allocation: UnsafeMutableRawBufferPointer) {
        if let pool { pool.recycle(allocation) } else { allocation.deallocate() }
    }
}
