/// Serializes writers of one socket within a loop: bytes that go out in several sends (a
/// WebSocket frame, a run of TLS records) must not be interleaved with another task's.
/// Loop-confined, so a flag and a queue of waiting continuations are enough.
public final class WriteGate {
    private var busy = false
    private var waiters: [UnsafeContinuation<Void, Never>] = []

    public init() {}

    /// Whether someone holds the gate now.
    public var isHeld: Bool { busy }

    public func acquire() async {
        if !busy {
            busy = true
            return
        }
        await withUnsafeContinuation { waiters.append($0) }
    }

    public func release() {
        assert(busy, "released a gate nobody held")
        if waiters.isEmpty {
            busy = false
        } else {
            waiters.removeFirst().resume()
        }
    }
}
