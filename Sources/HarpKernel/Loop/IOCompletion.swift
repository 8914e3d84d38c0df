import CShims

/// A caller-owned record for one in-flight ring operation: its address is the SQE's
/// `user_data`, so the record must stay alive until its completion has been delivered.
///
/// Completions are delivered after a whole batch has been reaped (never from inside the reap
/// loop), on the loop thread. Subclasses decide what a completion means: `AsyncCompletion`
/// resumes a suspended task; kernel state machines (listeners, the splice relay) override
/// `complete` directly to stay off the async machinery on hot paths.
open class IOCompletion: @unchecked Sendable {
    // @unchecked Sendable: a record is used only on the thread of the loop it was submitted to;
    // tasks may carry it between their suspension points, which all run on that loop.
    public init() {}

    /// Called once per CQE: `result` is the syscall result or `-errno`, `flags` the CQE flags.
    open func complete(result: Int32, flags: UInt32) {}

    /// The `user_data` value naming this record.
    @inlinable
    public var userData: UInt64 { UInt64(UInt(bitPattern: Unmanaged.passUnretained(self).toOpaque())) }
}

/// A completion record that a task awaits: one suspension per operation, no allocation.
public final class AsyncCompletion: IOCompletion, @unchecked Sendable {
    // @unchecked Sendable: restated from IOCompletion; used only on its loop's thread.
    var continuation: UnsafeContinuation<Int32, Never>?
    /// Monotonic nanoseconds after which the pending operation is cancelled (0: none).
    var deadline: UInt64 = 0
    /// Set by the deadline sweep when it cancelled the operation.
    var timedOut = false
    /// Whether the record is in its loop's deadline list.
    var watched = false
    /// What the kernel reads when the entry is submitted (not when it is prepared): a
    /// timeout's timespec or a socket address — one at a time, as a record serves one
    /// operation at a time. Allocated at the first such operation: most records (a socket's
    /// reads and writes) never need it, and every connection has two of those: an idle
    /// HTTP client costs 5.2 KiB (5.5 with the storage in every record; 3,000 held, two runs each).
    private var argumentStorage: UnsafeMutableRawPointer?

    var arguments: UnsafeMutableRawPointer {
        if let argumentStorage { return argumentStorage }
        let fresh = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<sockaddr_storage>.size, alignment: 16)
        argumentStorage = fresh
        return fresh
    }

    public override init() {}

    deinit { argumentStorage?.deallocate() }

    public override func complete(result: Int32, flags: UInt32) {
        guard let continuation else { return }
        self.continuation = nil
        continuation.resume(returning: result)
    }

    /// True while an operation using this record is in flight.
    public var isPending: Bool { continuation != nil }
}
