import Glibc
@testable import HarpKernel
import HarpTestSupport
import Testing

@Suite("framed reader")
struct FramedReaderTests {
    @Test("reads that fill the buffer grow it ×4 up to its capacity (a stream of frames consumed as they arrive); idle, it goes back to 4 KiB")
    func growsWhileFull() async throws {
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        let (a, b) = socketPair()
        defer { close(b) }
        // 150 KiB waiting: more than the first three buffer sizes together.
        let queued = [UInt8](repeating: 0x5A, count: 150 * 1024)
        var room: Int32 = 1 << 20  // so the write below never waits for a reader
        setsockopt(b, SOL_SOCKET, SO_SNDBUF, &room, socklen_t(MemoryLayout<Int32>.size))
        #expect(queued.withUnsafeBytes { Glibc.write(b, $0.baseAddress, $0.count) } == queued.count)
        let (sizes, afterIdle) = await loop.spawn { () -> ([Int], Int) in
            let socket = SocketStream(loop: loop, fd: a)
            let reader = FramedReader(stream: socket, capacity: 64 * 1024, growsWhenFull: true)
            var sizes: [Int] = []
            var total = 0
            while total < queued.count {
                let got = await reader.fill(timeout: .seconds(5))
                guard got > 0 else { break }
                sizes.append(got)
                total += got
                reader.buffer.consume(reader.buffer.count)
            }
            // Nothing more waiting: the next read waits with the first 4 KiB, not the peak.
            let idle = await reader.fill(timeout: .milliseconds(60))
            let afterIdle = idle == -Int(ETIMEDOUT) ? reader.buffer.allocatedSize : -idle
            await socket.close()
            return (sizes, afterIdle)
        }.value
        #expect(sizes == [4096, 16384, 65536, 65536, 2048], "\(sizes)")
        #expect(afterIdle == 4096)
    }
}
