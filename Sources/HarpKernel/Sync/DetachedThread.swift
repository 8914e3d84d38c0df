import Glibc

/// A thread of harp's own that runs one closure and ends (the log writer, the stall detector,
/// a worker's queue, the shutdown deadline): pthreads, because these must run whatever Swift's
/// cooperative pool is doing — including when every pool thread is blocked.
public enum DetachedThread {
    public static func start(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Body(body))
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            Unmanaged<Body>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, box.toOpaque())
        precondition(rc == 0, "pthread_create failed: \(rc)")
        pthread_detach(thread)
    }

    private final class Body: Sendable {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }
}
