/// Serializes writers of one socket within a loop: a frame that went out in several sends
/// must not be interleaved with a frame from another task (a ping, a close).
/// Loop-confined, so a flag and a queue of waiting continuations are enough.
final class WriteGate {
    private var busy = false
    private var waiters: [UnsafeContinuation<Void, Never>] = []

    func acquire() async {
        if !busy {
            busy = true
            return
        }
        await withUnsafeContinuation { waiters.append($0) }
    }

    func release() {
        if waiters.isEmpty {
            busy = false
        } else {
            waiters.removeFirst().resume()
        }
    }
}
