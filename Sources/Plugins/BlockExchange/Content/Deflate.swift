import CShims

/// zlib for metadata frames (manifests, have-lists, the metadata sync's operation batches):
/// sent deflated only when that is smaller — a manifest is mostly SHA-256 IDs, which do not
/// compress; a have-list of a half-done file compresses a lot.
public enum Deflate {
    /// `bytes` deflated, or nil when that would not be smaller.
    public static func compressIfSmaller(_ bytes: [UInt8]) -> [UInt8]? {
        guard bytes.count > 64 else { return nil }
        var length = compressBound(uLong(bytes.count))
        var out = [UInt8](repeating: 0, count: Int(length))
        let status = bytes.withUnsafeBufferPointer { source in
            compress2(&out, &length, source.baseAddress, uLong(source.count), 6)
        }
        guard status == Z_OK, Int(length) < bytes.count else { return nil }
        out.removeSubrange(Int(length)...)
        return out
    }

    /// Inflates `bytes`, refusing output over `limit` (a small frame must not become a large
    /// allocation): nil when the data is not zlib or inflates past the limit.
    public static func decompress(_ bytes: UnsafeRawBufferPointer, limit: Int) -> [UInt8]? {
        var stream = z_stream()
        guard inflateInit_(&stream, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return nil }
        defer { inflateEnd(&stream) }
        var out: [UInt8] = []
        var window = [UInt8](repeating: 0, count: 64 * 1024)
        stream.next_in = UnsafeMutablePointer(mutating: bytes.bindMemory(to: UInt8.self).baseAddress)
        stream.avail_in = uInt(bytes.count)
        while true {
            let status = window.withUnsafeMutableBufferPointer { buffer -> Int32 in
                stream.next_out = buffer.baseAddress
                stream.avail_out = uInt(buffer.count)
                return inflate(&stream, Z_NO_FLUSH)
            }
            let produced = window.count - Int(stream.avail_out)
            guard out.count + produced <= limit else { return nil }
            out += window[0..<produced]
            if status == Z_STREAM_END { return stream.avail_in == 0 ? out : nil }
            guard status == Z_OK, produced > 0 || stream.avail_in > 0 else { return nil }
        }
    }
}
