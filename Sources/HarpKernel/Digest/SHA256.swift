import CShims

/// Incremental SHA-256 through OpenSSL's EVP interface (libcrypto is linked anyway for TLS;
/// it is faster than a Swift implementation and adds nothing to build time).
public final class SHA256 {
    private let context: OpaquePointer

    public init() {
        context = EVP_MD_CTX_new()!
        EVP_DigestInit_ex(context, EVP_sha256(), nil)
    }

    deinit { EVP_MD_CTX_free(context) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        EVP_DigestUpdate(context, base, bytes.count)
    }

    public func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// The 32-byte digest; the hash must not be updated afterwards.
    public func finalize() -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        EVP_DigestFinal_ex(context, &digest, &length)
        return digest
    }

    /// The digest as 64 lowercase hex characters; the hash must not be updated afterwards.
    public func finalizeHex() -> String { Self.hexString(finalize()) }

    /// SHA-256 of `bytes`, as lowercase hex.
    public static func hexDigest(of bytes: [UInt8]) -> String {
        let hash = SHA256()
        hash.update(bytes)
        return hash.finalizeHex()
    }

    /// `bytes` as lowercase hex (no hashing).
    public static func hexString(_ bytes: [UInt8]) -> String {
        let hex = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes { out.append(hex[Int(byte >> 4)]); out.append(hex[Int(byte & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }
}
