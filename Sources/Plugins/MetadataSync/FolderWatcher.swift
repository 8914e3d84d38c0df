import Glibc
import HarpKernel
import Synchronization

/// inotify on every directory of the folder: any change asks for a scan (the scan finds what
/// changed; the watcher only says when to look). A thread of its own blocks in read(2).
///
/// The node's own changes (a fetched file renamed into place, a directory made) are announced
/// first with `expect` and do not ask for a scan: on a receiving node every landed file asked
/// for a full walk of the folder, so at 2,000 files the walks took most of a core and held up
/// the files waiting to land. An expectation lasts 2 s; one whose event never came (its
/// directory not watched yet) could hide a user's change at that path in that window — the
/// periodic rescan still finds it.
final class FolderWatcher: Sendable {
    private let fd: Int32
    /// Watched directories (absolute paths) by watch descriptor, and the reverse.
    private let watched = Mutex<(byPath: [String: Int32], byDescriptor: [Int32: String])>(([:], [:]))
    /// Paths (absolute) the node is about to change itself: how many events each still
    /// expects, until when.
    private let expected = Mutex<[String: (count: Int, until: UInt64)]>([:])
    private let thread = WorkerThread(name: "harp-watcher")
    private let stopping = Atomic<Bool>(false)

    /// nil when inotify is not available (the periodic rescan still runs).
    init?(onChange: @escaping @Sendable () -> Void) {
        fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard fd >= 0 else { return nil }
        let fd = self.fd
        thread.enqueue { [self] in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: MemoryLayout<inotify_event>.alignment)
            defer { buffer.deallocate() }
            while !self.stopping.load(ordering: .relaxed) {
                // Half-second polls, so that `stop` is noticed (closing an fd does not wake a
                // read blocked on it).
                var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let polled = poll(&ready, 1, 500)
                if polled < 0 && errno == EINTR { continue }
                if polled < 0 { return }
                if polled == 0 { continue }
                let count = read(fd, buffer.baseAddress, buffer.count)
                if count < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                if count <= 0 { return }
                if self.containsForeign(UnsafeRawBufferPointer(rebasing: buffer[..<count])) { onChange() }
            }
        }
    }

    /// Whether the events read include one the node did not announce.
    private func containsForeign(_ events: UnsafeRawBufferPointer) -> Bool {
        var offset = 0, foreign = false
        let now = EventLoop.preciseNanos()
        while offset + MemoryLayout<inotify_event>.size <= events.count {
            let header = events.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
            let nameStart = offset + MemoryLayout<inotify_event>.size
            let nameEnd = min(nameStart + Int(header.len), events.count)
            offset = nameEnd
            if header.mask & UInt32(IN_Q_OVERFLOW) != 0 { return true }
            if header.mask & UInt32(IN_IGNORED) != 0 {
                watched.withLock { watched in
                    if let path = watched.byDescriptor.removeValue(forKey: header.wd), watched.byPath[path] == header.wd {
                        watched.byPath[path] = nil
                    }
                }
                continue
            }
            let name = String(decoding: events[nameStart..<nameEnd].prefix { $0 != 0 }, as: UTF8.self)
            // Hidden names (the staging and version directories among them) are never synced.
            if name.hasPrefix(".") { continue }
            guard let directory = watched.withLock({ $0.byDescriptor[header.wd] }) else { foreign = true; continue }
            let path = name.isEmpty ? directory : directory + "/" + name
            let own = expected.withLock { expected -> Bool in
                guard let entry = expected[path], now < entry.until else { return false }
                expected[path] = entry.count > 1 ? (entry.count - 1, entry.until) : nil
                return true
            }
            if !own { foreign = true }
        }
        return foreign
    }

    /// The node is about to change `path` (absolute) itself: its next `events` inotify events
    /// within 2 s ask for no scan.
    func expect(_ path: String, events: Int = 1) {
        let until = EventLoop.preciseNanos() &+ 2_000_000_000
        expected.withLock { expected in
            expected[path] = ((expected[path]?.count ?? 0) + events, until)
            // Stale ones go when the table grows (an event that never came).
            if expected.count > 4096 {
                let now = EventLoop.preciseNanos()
                expected = expected.filter { $0.value.until > now }
            }
        }
    }

    /// Watches each of these directories (absolute paths) not watched yet.
    func watch(_ directories: [String]) {
        let mask = UInt32(IN_CREATE | IN_DELETE | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_ATTRIB | IN_DELETE_SELF)
        watched.withLock { watched in
            for directory in directories where watched.byPath[directory] == nil {
                let descriptor = inotify_add_watch(fd, directory, mask)
                guard descriptor >= 0 else { continue }
                // A directory renamed keeps its descriptor: the new name replaces the old.
                if let old = watched.byDescriptor[descriptor] { watched.byPath[old] = nil }
                watched.byPath[directory] = descriptor
                watched.byDescriptor[descriptor] = directory
            }
        }
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        thread.enqueue { [fd] in close(fd) }  // after the read loop has returned
        thread.stop()
    }
}
