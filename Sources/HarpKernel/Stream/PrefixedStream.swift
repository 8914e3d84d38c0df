/// A stream whose reads first return bytes that were already read from it into a buffer
/// (a `FramedReader` that decoded a message and took some of what followed), then the
/// stream's own. For handing a stream on after a protocol's first messages — an frp work
/// connection after `StartWorkConn`, whose user bytes may have arrived with it.
///
/// Loop-confined, like the stream it wraps.
public final class PrefixedStream: ByteStream, @unchecked Sendable {
    // @unchecked Sendable: used only on `inner`'s loop.
    public let inner: any ByteStream
    private let buffered: ReadBuffer

    public init(_ inner: any ByteStream, buffered: ReadBuffer) {
        self.inner = inner
        self.buffered = buffered
    }

    public var loop: EventLoop { inner.loop }
    /// Splice only once the buffered bytes are gone (they are in user space).
    public var spliceDescriptor: Int32? { buffered.isEmpty ? inner.spliceDescriptor : nil }
    public var peer: SocketAddress? { inner.peer }

    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration?, expectingWait: Bool) async -> Int {
        loop.assertInLoop()
        guard buffered.isEmpty else {
            let count = min(buffer.count, buffered.count)
            buffer.baseAddress!.copyMemory(from: buffered.readable.baseAddress!, byteCount: count)
            buffered.consume(count)
            return count
        }
        return await inner.read(into: buffer, timeout: timeout, expectingWait: expectingWait)
    }

    public func waitReadable(timeout: Duration?) async -> Int32 {
        buffered.isEmpty ? await inner.waitReadable(timeout: timeout) : 1
    }

    public func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration?) async -> Int32 { await inner.write(bytes, timeout: timeout) }
    public func write(_ bytes: [UInt8], timeout: Duration?) async -> Int32 { await inner.write(bytes, timeout: timeout) }
    public func finishWriting() async { await inner.finishWriting() }
    public func close() async { await inner.close() }
    public func abort() { inner.abort() }
    public func isQuietWhileIdle() -> Bool { buffered.isEmpty && inner.isQuietWhileIdle() }
}
