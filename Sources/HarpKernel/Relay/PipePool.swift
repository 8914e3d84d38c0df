import CShims
import Glibc

/// A kernel pipe used as the zero-copy buffer between two sockets.
public struct Pipe {
    public let readEnd: Int32
    public let writeEnd: Int32
    /// Bytes the pipe can hold; a splice moves at most this much per call.
    public let capacity: Int
}

/// Pipes are costly to create (two descriptors, a fcntl to grow them), so each loop keeps the
/// empty ones for reuse. A pipe that still holds bytes (an aborted relay) is closed instead.
public final class PipePool {
    /// 1 MiB, the default /proc/sys/fs/pipe-max-size: 16x the default pipe, so one splice
    /// pair moves up to 1 MiB and a bulk relay needs far fewer syscalls.
    static let preferredSize: Int32 = 1 << 20
    private var free: [Pipe] = []
    private let maxFree: Int

    init(maxFree: Int = 256) {
        self.maxFree = maxFree
    }

    /// An empty pipe, or nil when the process is out of descriptors.
    public func take() -> Pipe? {
        if let pipe = free.popLast() { return pipe }
        var fds: [Int32] = [0, 0]
        guard harp_pipe_nonblocking(&fds) == 0 else { return nil }
        var capacity = Int(harp_set_pipe_size(fds[1], Self.preferredSize))
        if capacity <= 0 { capacity = 65536 }  // pipe-max-size lowered: keep the default size
        return Pipe(readEnd: fds[0], writeEnd: fds[1], capacity: capacity)
    }

    /// Returns a pipe; `empty` says whether every byte spliced in was spliced out again.
    public func give(_ pipe: Pipe, empty: Bool) {
        if empty && free.count < maxFree {
            free.append(pipe)
        } else {
            close(pipe.readEnd)
            close(pipe.writeEnd)
        }
    }

    func drain() {
        for pipe in free {
            close(pipe.readEnd)
            close(pipe.writeEnd)
        }
        free.removeAll()
    }
}
