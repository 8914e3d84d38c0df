import CShims
import Glibc

/// The ring operations a connection handler awaits. Each call suspends the task once and
/// returns the kernel's result: a count, a file descriptor, or `-errno`.
/// All of them must be called from a task running on this loop.
extension EventLoop {
    public func accept(_ listener: Int32, using record: AsyncCompletion) async -> Int32 {
        await perform(record) { io_uring_prep_accept($0, listener, nil, nil, Socket.acceptFlags) }
    }

    /// Connects `fd` to `address`; with a `timeout`, fails with `-ETIMEDOUT` once it has passed.
    public func connect(_ fd: Int32, to address: SocketAddress, timeout: Duration? = nil,
                        using record: AsyncCompletion) async -> Int32 {
        let storage = record.arguments
        let length = address.write(to: storage)
        return await perform(record, timeout: timeout) {
            io_uring_prep_connect($0, fd, storage.assumingMemoryBound(to: sockaddr.self), length)
        }
    }

    /// Receives into `buffer`; with a `timeout`, fails with `-ETIMEDOUT` when nothing arrived
    /// in time. Returns the byte count, 0 at end-of-stream, or `-errno`.
    ///
    /// `expectingWait`: the caller knows nothing has arrived yet (a response right after its
    /// request was sent, the next request on a kept-alive connection), so the ring waits for
    /// readability before trying instead of failing a receive first (`RECVSEND_POLL_FIRST`).
    public func recv(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil,
                     expectingWait: Bool = false, using record: AsyncCompletion) async -> Int32 {
        while true {
            let result = await perform(record, timeout: timeout) {
                io_uring_prep_recv($0, fd, buffer.baseAddress, buffer.count, 0)
                if expectingWait { $0.pointee.ioprio |= UInt16(IORING_RECVSEND_POLL_FIRST) }
            }
            // Every loop socket is O_NONBLOCK. The ring polls such a socket itself (kernel 6.18:
            // a receive on an empty non-blocking socket waits), but kernels have answered
            // EAGAIN instead: then wait for readability ourselves and try again.
            guard result == -EAGAIN else { return result }
            let ready = await perform(record, timeout: timeout) { io_uring_prep_poll_add($0, fd, UInt32(POLLIN)) }
            if ready < 0 { return ready }
        }
    }

    public func send(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, timeout: Duration? = nil,
                     using record: AsyncCompletion) async -> Int32 {
        while true {
            let result = await perform(record, timeout: timeout) {
                io_uring_prep_send($0, fd, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL))
            }
            guard result == -EAGAIN else { return result }
            let ready = await perform(record, timeout: timeout) { io_uring_prep_poll_add($0, fd, UInt32(POLLOUT)) }
            if ready < 0 { return ready }
        }
    }

    /// Sends all of `buffer`, resubmitting after short writes. Returns 0 or `-errno`.
    public func sendAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, timeout: Duration? = nil,
                        using record: AsyncCompletion) async -> Int32 {
        var offset = 0
        while offset < buffer.count {
            let sent = await send(fd, UnsafeRawBufferPointer(rebasing: buffer[offset...]), timeout: timeout, using: record)
            if sent <= 0 { return sent == 0 ? -EPIPE : sent }
            offset += Int(sent)
        }
        return 0
    }

    /// `IORING_OP_SPLICE`: one of the two descriptors must be a pipe; an offset of -1 means
    /// "the file's current position" (and is required for pipes and sockets).
    public func splice(from input: Int32, offset inputOffset: Int64 = -1, to output: Int32,
                       offset outputOffset: Int64 = -1, count: Int, flags: UInt32 = 0,
                       using record: AsyncCompletion) async -> Int32 {
        await perform(record) {
            io_uring_prep_splice($0, input, inputOffset, output, outputOffset, UInt32(count), flags)
        }
    }

    public func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64,
                     using record: AsyncCompletion) async -> Int32 {
        await perform(record) { io_uring_prep_read($0, fd, buffer.baseAddress, UInt32(buffer.count), offset) }
    }

    public func write(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, at offset: UInt64,
                      using record: AsyncCompletion) async -> Int32 {
        await perform(record) { io_uring_prep_write($0, fd, buffer.baseAddress, UInt32(buffer.count), offset) }
    }

    /// openat(2) on the ring: opening a file can wait for the disk (cold metadata, a network
    /// file system), which a loop thread must never do itself. Returns the descriptor or `-errno`.
    public func open(_ path: String, flags: Int32, mode: mode_t = 0, using record: AsyncCompletion) async -> Int32 {
        // The path must stay put until the ring has read it: a copy the call owns.
        guard let cPath = strdup(path) else { return -ENOMEM }
        defer { free(cPath) }
        return await perform(record) { io_uring_prep_openat($0, AT_FDCWD, cPath, flags, mode) }
    }

    /// fsync(2) — fdatasync with `dataOnly` — on the ring: the kernel runs it in its own
    /// workers, so several files sync at once and ext4 commits them in one journal
    /// transaction. (Synced one after another on a worker thread, each small file was a
    /// commit of its own: 20,000 files of 1–16 KiB landed at ~800 a second.)
    public func sync(_ fd: Int32, dataOnly: Bool = false, using record: AsyncCompletion) async -> Int32 {
        await perform(record) { io_uring_prep_fsync($0, fd, dataOnly ? UInt32(IORING_FSYNC_DATASYNC) : 0) }
    }

    public func close(_ fd: Int32, using record: AsyncCompletion) async -> Int32 {
        await perform(record) { io_uring_prep_close($0, fd) }
    }

    /// Waits until `fd` reports one of `events` (POLLIN, POLLOUT, …); returns the revents.
    public func poll(_ fd: Int32, events: Int32, using record: AsyncCompletion) async -> Int32 {
        await perform(record) { io_uring_prep_poll_add($0, fd, UInt32(events)) }
    }

    /// Suspends for `duration`. Returns 0 when the time has passed, `-ECANCELED` when the
    /// timer was cancelled first.
    public func sleep(for duration: Duration, using record: AsyncCompletion) async -> Int32 {
        let timespec = record.arguments.initializeMemory(as: __kernel_timespec.self, repeating: __kernel_timespec(duration), count: 1)
        let result = await perform(record) { io_uring_prep_timeout($0, timespec, 0, 0) }
        return result == -ETIME ? 0 : result
    }

    /// Cancels the operation in flight on `target`. The target completes with `-ECANCELED`
    /// (if it had not completed already); this returns 0, `-ENOENT` (nothing to cancel) or
    /// `-EALREADY` (already running and about to complete).
    public func cancel(_ target: IOCompletion, using record: AsyncCompletion) async -> Int32 {
        await perform(record) { io_uring_prep_cancel64($0, target.userData, 0) }
    }

    /// Fire-and-forget cancel for kernel state machines: the target still gets its completion.
    public func cancel(_ target: IOCompletion) {
        submitUnobserved { io_uring_prep_cancel64($0, target.userData, 0) }
    }
}

extension __kernel_timespec {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.init(tv_sec: seconds, tv_nsec: attoseconds / 1_000_000_000)
    }
}
