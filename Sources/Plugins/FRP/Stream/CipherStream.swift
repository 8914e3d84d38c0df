import CShims
import Glibc
import HarpKernel

/// frp's encryption of a stream (golib crypto): AES-128-CFB, one continuous keystream per
/// direction, each writer sending a random 16-byte IV in clear before its first byte. Wraps
/// the control stream after `LoginResp` and, with `use_encryption`, a proxy's work
/// connection. OpenSSL's CFB128 keeps its position across calls, so any chunking works.
///
/// Loop-confined, like the stream it wraps.
final class CipherStream: ByteStream, @unchecked Sendable {
    // @unchecked Sendable: used only on `inner`'s loop.
    let inner: any ByteStream
    private let key: [UInt8]
    private var encryptor: OpaquePointer?
    private var decryptor: OpaquePointer?
    /// The peer's IV as it arrives (stable memory: the ring writes into it).
    private let iv = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 16)
    private var ivCount = 0

    init(_ inner: any ByteStream, key: [UInt8]) {
        self.inner = inner
        self.key = key
    }

    deinit {
        iv.deallocate()
        if let encryptor { EVP_CIPHER_CTX_free(encryptor) }
        if let decryptor { EVP_CIPHER_CTX_free(decryptor) }
    }

    var loop: EventLoop { inner.loop }
    var spliceDescriptor: Int32? { nil }
    var peer: SocketAddress? { inner.peer }

    private func makeContext(iv: [UInt8], encrypt: Bool) -> OpaquePointer? {
        guard let context = EVP_CIPHER_CTX_new() else { return nil }
        guard EVP_CipherInit_ex(context, EVP_aes_128_cfb128(), nil, key, iv, encrypt ? 1 : 0) == 1 else {
            EVP_CIPHER_CTX_free(context)
            return nil
        }
        return context
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration?, expectingWait: Bool) async -> Int {
        loop.assertInLoop()
        if decryptor == nil {
            // The peer's IV comes first; it may arrive in pieces.
            while ivCount < 16 {
                let got = await inner.read(into: UnsafeMutableRawBufferPointer(rebasing: iv[ivCount...]), timeout: timeout,
                                           expectingWait: expectingWait)
                if got <= 0 { return got }
                ivCount += got
            }
            guard let context = makeContext(iv: Array(iv), encrypt: false) else { return -Int(EPROTO) }
            decryptor = context
        }
        let got = await inner.read(into: buffer, timeout: timeout, expectingWait: expectingWait)
        guard got > 0 else { return got }
        var outLength: Int32 = 0
        let base = buffer.baseAddress!.assumingMemoryBound(to: UInt8.self)
        guard EVP_CipherUpdate(decryptor, base, &outLength, base, Int32(got)) == 1, Int(outLength) == got else { return -Int(EPROTO) }
        return got
    }

    func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration?) async -> Int32 {
        loop.assertInLoop()
        var prefix = 0
        let scratch = loop.copyBuffers.take()
        defer { loop.copyBuffers.give(scratch) }
        if encryptor == nil {
            var ownIV = [UInt8](repeating: 0, count: 16)
            guard RAND_bytes(&ownIV, 16) == 1, let context = makeContext(iv: ownIV, encrypt: true) else { return -EPROTO }
            encryptor = context
            scratch.copyBytes(from: ownIV)
            prefix = 16
        }
        var offset = 0
        repeat {
            let count = min(bytes.count - offset, BufferPool.copyChunk - prefix)
            var outLength: Int32 = 0
            if count > 0 {
                let out = scratch.baseAddress!.assumingMemoryBound(to: UInt8.self) + prefix
                let source = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self) + offset
                guard EVP_CipherUpdate(encryptor, out, &outLength, source, Int32(count)) == 1 else { return -EPROTO }
            }
            let sent = await inner.write(UnsafeRawBufferPointer(rebasing: scratch[0..<prefix + Int(outLength)]), timeout: timeout)
            if sent != 0 { return sent }
            offset += count
            prefix = 0
        } while offset < bytes.count
        return 0
    }

    func waitReadable(timeout: Duration?) async -> Int32 { await inner.waitReadable(timeout: timeout) }
    func finishWriting() async { await inner.finishWriting() }
    func close() async { await inner.close() }
    func abort() { inner.abort() }
}
