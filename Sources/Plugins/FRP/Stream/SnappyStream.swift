import CShims
import Glibc
import HarpKernel

/// frp's `use_compression`: the snappy *framing* format (google/snappy framing_format.txt, as
/// golang/snappy writes it) over a stream. Blocks are compressed and uncompressed by Debian's
/// libsnappy; the framing — a stream identifier, then chunks of ≤ 64 KiB with a masked
/// CRC-32C of the uncompressed bytes — is written here. Like frp's writer, every write is
/// flushed as whole chunks (no buffering across writes), and a chunk that would not shrink by
/// an eighth goes out uncompressed.
///
/// Loop-confined, like the stream it wraps.
final class SnappyStream: ByteStream, @unchecked Sendable {
    // @unchecked Sendable: used only on `inner`'s loop.
    let inner: any ByteStream
    private let reader: FramedReader
    /// The last chunk's uncompressed bytes (`pending[pendingOffset..<pendingCount]` unread),
    /// in one buffer of the largest chunk's size made once per stream: no allocation a chunk.
    private let pending = UnsafeMutableRawBufferPointer.allocate(byteCount: maxChunkData, alignment: 16)
    private var pendingCount = 0
    private var pendingOffset = 0
    private var sentIdentifier = false
    private var sawIdentifier = false

    static let maxChunkData = 65536
    static let identifier: [UInt8] = [0xFF, 0x06, 0x00, 0x00, 0x73, 0x4E, 0x61, 0x50, 0x70, 0x59]

    deinit { pending.deallocate() }

    init(_ inner: any ByteStream) {
        self.inner = inner
        // A compressed chunk of 64 KiB data is at most snappy's bound for it plus framing.
        reader = FramedReader(stream: inner, capacity: 4 + 4 + Int(snappy_max_compressed_length(Self.maxChunkData)) + 4096)
    }

    var loop: EventLoop { inner.loop }
    var spliceDescriptor: Int32? { nil }
    var peer: SocketAddress? { inner.peer }

    // MARK: Reading

    func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration?, expectingWait: Bool) async -> Int {
        loop.assertInLoop()
        while pendingOffset == pendingCount {
            let result = await nextChunk(timeout: timeout, expectingWait: expectingWait)
            if result <= 0 { return result }
        }
        let count = min(buffer.count, pendingCount - pendingOffset)
        buffer.baseAddress!.copyMemory(from: pending.baseAddress! + pendingOffset, byteCount: count)
        pendingOffset += count
        return count
    }

    /// Reads one chunk into `pending`: 1, 0 at end of stream, or `-errno` (`-EPROTO` for a
    /// broken stream: bad checksum, unknown unskippable chunk, data before the identifier).
    private func nextChunk(timeout: Duration?, expectingWait: Bool) async -> Int {
        var decoder = SnappyChunkDecoder()
        switch await reader.next(&decoder, timeout: timeout, expectingWait: expectingWait) {
        case .frame(let type, let headerLength, let length):
            let held = await reader.hold(headerLength + length, timeout: timeout)
            if held <= 0 { return held == 0 ? -Int(EPROTO) : held }  // ended inside a chunk: broken
            defer { reader.buffer.consume(headerLength + length) }
            let body = UnsafeRawBufferPointer(rebasing: reader.buffer.readable[headerLength..<headerLength + length])
            return decode(type: type, body)
        case .invalid:
            return -Int(EPROTO)
        case .full:
            return -Int(EPROTO)
        case .ended(let result):
            return result
        }
    }

    private func decode(type: UInt8, _ body: UnsafeRawBufferPointer) -> Int {
        switch type {
        case 0xFF:
            guard body.count == 6, Array(body) == Array(Self.identifier[4...]) else { return -Int(EPROTO) }
            sawIdentifier = true
            pendingCount = 0
            pendingOffset = 0
            return 1
        case 0x00, 0x01:
            guard sawIdentifier, body.count >= 4 else { return -Int(EPROTO) }
            let expected = body.loadUnaligned(as: UInt32.self).littleEndian
            let data = UnsafeRawBufferPointer(rebasing: body[4...])
            if type == 0x01 {
                guard data.count <= Self.maxChunkData else { return -Int(EPROTO) }
                if data.count > 0 { pending.baseAddress!.copyMemory(from: data.baseAddress!, byteCount: data.count) }
                pendingCount = data.count
            } else {
                var length = 0
                guard snappy_uncompressed_length(data.baseAddress?.assumingMemoryBound(to: CChar.self), data.count, &length) == SNAPPY_OK,
                      length <= Self.maxChunkData else { return -Int(EPROTO) }
                var outLength = length
                guard snappy_uncompress(data.baseAddress?.assumingMemoryBound(to: CChar.self), data.count,
                                        pending.baseAddress!.assumingMemoryBound(to: CChar.self), &outLength) == SNAPPY_OK,
                      outLength == length else { return -Int(EPROTO) }
                pendingCount = length
            }
            pendingOffset = 0
            guard CRC32C.masked(UnsafeRawBufferPointer(rebasing: pending[0..<pendingCount])) == expected else {
                pendingCount = 0
                return -Int(EPROTO)
            }
            return 1
        case 0x02...0x7F:
            return -Int(EPROTO)  // reserved unskippable chunks
        default:
            pendingCount = 0
            pendingOffset = 0
            return 1  // skippable (0x80–0xFE): padding and the like
        }
    }

    func waitReadable(timeout: Duration?) async -> Int32 {
        pendingOffset < pendingCount ? 1 : await inner.waitReadable(timeout: timeout)
    }

    // MARK: Writing

    func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration?) async -> Int32 {
        loop.assertInLoop()
        let scratch = loop.copyBuffers.take()
        defer { loop.copyBuffers.give(scratch) }
        var used = 0
        if !sentIdentifier {
            sentIdentifier = true
            scratch.copyBytes(from: Self.identifier)
            used = Self.identifier.count
        }
        var offset = 0
        let chunkBound = 8 + Int(snappy_max_compressed_length(Self.maxChunkData))
        repeat {
            let count = min(Self.maxChunkData, bytes.count - offset)
            if used + chunkBound > scratch.count {
                let sent = await inner.write(UnsafeRawBufferPointer(rebasing: scratch[0..<used]), timeout: timeout)
                if sent != 0 { return sent }
                used = 0
            }
            let data = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count])
            used += Self.writeChunk(data, into: UnsafeMutableRawBufferPointer(rebasing: scratch[used...]))
            offset += count
        } while offset < bytes.count
        return used == 0 ? 0 : await inner.write(UnsafeRawBufferPointer(rebasing: scratch[0..<used]), timeout: timeout)
    }

    /// One chunk for `data` at the start of `out`: compressed unless that saves under an eighth.
    /// Returns its size.
    static func writeChunk(_ data: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Int {
        let crc = CRC32C.masked(data)
        var compressedLength = out.count - 8
        let compressed = snappy_compress(data.baseAddress?.assumingMemoryBound(to: CChar.self), data.count,
                                         (out.baseAddress! + 8).assumingMemoryBound(to: CChar.self), &compressedLength) == SNAPPY_OK
        let type: UInt8
        let length: Int
        if compressed && compressedLength < data.count - data.count / 8 {
            type = 0x00
            length = compressedLength
        } else {
            type = 0x01
            length = data.count
            if data.count > 0 { (out.baseAddress! + 8).copyMemory(from: data.baseAddress!, byteCount: data.count) }
        }
        let chunkLength = UInt32(length + 4)
        out[0] = type
        out[1] = UInt8(chunkLength & 0xFF)
        out[2] = UInt8((chunkLength >> 8) & 0xFF)
        out[3] = UInt8((chunkLength >> 16) & 0xFF)
        out.storeBytes(of: crc.littleEndian, toByteOffset: 4, as: UInt32.self)
        return 8 + length
    }

    func finishWriting() async { await inner.finishWriting() }
    func close() async { await inner.close() }
    func abort() { inner.abort() }
}

/// Snappy framing chunks: type byte, 3-byte little-endian length, body.
struct SnappyChunkDecoder: FrameDecoder {
    func decode(_ bytes: UnsafeRawBufferPointer) -> FrameDecision<UInt8, String> {
        guard bytes.count >= 4 else { return .needMore }
        let length = Int(bytes[1]) | Int(bytes[2]) << 8 | Int(bytes[3]) << 16
        // Data chunks carry at most 64 KiB uncompressed; nothing harp reads is larger.
        guard length <= 4 + Int(snappy_max_compressed_length(SnappyStream.maxChunkData)) else {
            return .invalid("snappy chunk of \(length) bytes")
        }
        return .frame(bytes[0], headerLength: 4, payloadLength: length)
    }
}

/// CRC-32C (Castagnoli), as the snappy framing format checksums data: table-driven, 8 bytes a
/// step (slicing-by-8), then masked (rotated right by 15, plus a constant) so that a checksum
/// of checksummed data does not collapse.
enum CRC32C {
    static let tables: [[UInt32]] = {
        var tables = [[UInt32]](repeating: [UInt32](repeating: 0, count: 256), count: 8)
        for i in 0..<256 {
            var crc = UInt32(i)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
            tables[0][i] = crc
        }
        for i in 0..<256 {
            for k in 1..<8 { tables[k][i] = (tables[k - 1][i] >> 8) ^ tables[0][Int(tables[k - 1][i] & 0xFF)] }
        }
        return tables
    }()

    static func checksum(_ data: UnsafeRawBufferPointer) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        var index = 0
        let count = data.count
        tables.withUnsafeBufferPointer { t in
            while count - index >= 8 {
                let word = data.loadUnaligned(fromByteOffset: index, as: UInt64.self).littleEndian ^ UInt64(crc)
                crc = t[7][Int(word & 0xFF)] ^ t[6][Int((word >> 8) & 0xFF)] ^ t[5][Int((word >> 16) & 0xFF)]
                    ^ t[4][Int((word >> 24) & 0xFF)] ^ t[3][Int((word >> 32) & 0xFF)] ^ t[2][Int((word >> 40) & 0xFF)]
                    ^ t[1][Int((word >> 48) & 0xFF)] ^ t[0][Int(word >> 56)]
                index += 8
            }
            while index < count {
                crc = t[0][Int((crc ^ UInt32(data[index])) & 0xFF)] ^ (crc >> 8)
                index += 1
            }
        }
        return ~crc
    }

    static func masked(_ data: UnsafeRawBufferPointer) -> UInt32 {
        let crc = checksum(data)
        return ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
    }
}
