import CShims
import Glibc

/// A thread of harp's own that runs one closure and ends (the log writer, the stall detector,
/// a worker's queue, the shutdown deadline): pthreads, because these must run whatever Swift's
/// cooperative pool is doing — including when every pool thread is blocked.
public enum DetachedThread {
    /// `name` shows in `top -H` and `/proc/PID/task/*/comm` (cut to 15 bytes, the kernel's
    /// limit): which of harp's threads is busy is the first question a slow node raises.
    public static func start(name: String, _ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Body(body))
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            Unmanaged<Body>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, box.toOpaque())
        precondition(rc == 0, "pthread_create failed: \(rc)")
        Self.name(thread, name)
        pthread_detach(thread)
    }

    /// Names `thread` (at most 15 bytes are kept).
    public static func name(_ thread: pthread_t, _ name: String) {
        _ = harp_set_thread_name(thread, name)
    }

    private final class Body: Sendable {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }
}
