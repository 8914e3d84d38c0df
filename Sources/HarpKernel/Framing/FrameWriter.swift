/// Serializes writers of one stream: a frame written in several parts (a header, then a
/// payload streamed as it arrives), or a run of frames, must not be interleaved with another
/// task's frame — a WebSocket inspector's own ping inside a forwarded frame, a yamux window
/// update inside a data frame.
///
/// Loop-confined.
public final class FrameWriter: @unchecked Sendable {
    // @unchecked Sendable: used only on its stream's loop; tasks that share it run there too.
    public let stream: any ByteStream
    private let gate = WriteGate()

    public init(stream: any ByteStream) {
        self.stream = stream
    }

    /// Writes one whole frame (0 or `-errno`); see `ByteStream.write` on buffer lifetime.
    public func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration?) async -> Int32 {
        await exclusive { await stream.write(bytes, timeout: timeout) }
    }

    /// Writes one whole frame held in an array (0 or `-errno`).
    public func write(_ bytes: [UInt8], timeout: Duration?) async -> Int32 {
        await exclusive { await stream.write(bytes, timeout: timeout) }
    }

    /// Runs `body` while no other writer may write: for a frame written in parts.
    public func exclusive<T>(_ body: () async -> T) async -> T {
        stream.loop.assertInLoop()
        await gate.acquire()
        defer { gate.release() }
        return await body()
    }
}
