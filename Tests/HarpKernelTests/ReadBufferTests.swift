@testable import HarpKernel
import Testing

@Suite("read buffer")
struct ReadBufferTests {
    @Test("release: an empty buffer gives its first-size allocation to the loop's pool and the next use takes it back; a buffer holding data keeps it")
    func releaseToPool() {
        let pool = BufferPool(size: 4096, maxFree: 4)
        let buffer = ReadBuffer(capacity: 64 * 1024, pool: pool)
        let first = buffer.writable.baseAddress
        buffer.didWrite(10)
        buffer.release()
        #expect(buffer.allocatedSize == 4096, "ten unread bytes: nothing released")
        buffer.consume(10)
        buffer.release()
        #expect(buffer.allocatedSize == 0)
        #expect(buffer.writable.baseAddress == first, "the next use takes the pooled allocation")
        // Growing frees the first-size allocation into the pool too.
        buffer.reserve(16 * 1024)
        #expect(buffer.allocatedSize == 16 * 1024)
        let pooled = pool.take()
        #expect(pooled.baseAddress == first)
        pool.give(pooled)
    }
}
