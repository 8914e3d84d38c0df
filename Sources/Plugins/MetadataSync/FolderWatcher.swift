import Glibc
import HarpKernel
import Synchronization

/// inotify on every directory of the folder: any change asks for a scan (the scan finds what
/// changed; the watcher only says when to look). A thread of its own blocks in read(2).
final class FolderWatcher: Sendable {
    private let fd: Int32
    private let watched = Mutex<[String: Int32]>([:])
    private let thread = WorkerThread()
    private let stopping = Atomic<Bool>(false)

    /// nil when inotify is not available (the periodic rescan still runs).
    init?(onChange: @escaping @Sendable () -> Void) {
        fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard fd >= 0 else { return nil }
        let fd = self.fd
        thread.enqueue { [self] in
            var buffer = [UInt8](repeating: 0, count: 64 * 1024)
            while !self.stopping.load(ordering: .relaxed) {
                // Half-second polls, so that `stop` is noticed (closing an fd does not wake a
                // read blocked on it).
                var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let polled = poll(&ready, 1, 500)
                if polled < 0 && errno == EINTR { continue }
                if polled < 0 { return }
                if polled == 0 { continue }
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                if count <= 0 { return }
                onChange()
            }
        }
    }

    /// Watches each of these directories (absolute paths) not watched yet.
    func watch(_ directories: [String]) {
        let mask = UInt32(IN_CREATE | IN_DELETE | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_ATTRIB | IN_DELETE_SELF)
        watched.withLock { watched in
            for directory in directories where watched[directory] == nil {
                let descriptor = inotify_add_watch(fd, directory, mask)
                if descriptor >= 0 { watched[directory] = descriptor }
            }
        }
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        thread.enqueue { [fd] in close(fd) }  // after the read loop has returned
        thread.stop()
    }
}
