import CShims
import Glibc

/// Ed25519 signatures through OpenSSL (a P2P node's identity key signs what it makes, so a
/// peer that relays it cannot change it or make something in its name). Measured here:
/// ~43,000 signatures and ~16,000 verifications per second on one core (`openssl speed
/// ed25519`) — so callers sign and verify once per run of records, not per record.
public enum Ed25519 {
    /// A private key, from the PEM file a node's identity keeps (`node.key`).
    public final class PrivateKey: @unchecked Sendable {
        // @unchecked Sendable: the EVP_PKEY is never changed after loading; OpenSSL allows
        // concurrent signing with one key (each call makes its own EVP_MD_CTX).
        let key: OpaquePointer
        /// The 32-byte raw public key.
        public let publicKey: [UInt8]

        public init(pemFile path: String) throws(CertificateFactory.Failure) {
            guard let bio = BIO_new_file(path, "r") else { throw CertificateFactory.Failure("\(path) cannot be read") }
            defer { BIO_free(bio) }
            guard let key = PEM_read_bio_PrivateKey(bio, nil, nil, nil) else { throw CertificateFactory.Failure("\(path) is not a PEM private key") }
            guard EVP_PKEY_get_id(key) == EVP_PKEY_ED25519 else {
                EVP_PKEY_free(key)
                throw CertificateFactory.Failure("\(path) is not an Ed25519 key")
            }
            var raw = [UInt8](repeating: 0, count: 32)
            var length = 32
            guard EVP_PKEY_get_raw_public_key(key, &raw, &length) == 1, length == 32 else {
                EVP_PKEY_free(key)
                throw CertificateFactory.Failure("\(path): cannot read the public key")
            }
            self.key = key
            publicKey = raw
        }

        deinit { EVP_PKEY_free(key) }

        /// The 64-byte signature of `message`.
        public func sign(_ message: [UInt8]) -> [UInt8] {
            let context = EVP_MD_CTX_new()!
            defer { EVP_MD_CTX_free(context) }
            var signature = [UInt8](repeating: 0, count: 64)
            var length = 64
            let ok = EVP_DigestSignInit(context, nil, nil, nil, key) == 1
                && message.withUnsafeBytes { EVP_DigestSign(context, &signature, &length, $0.baseAddress, $0.count) } == 1
            // Signing with a loaded Ed25519 key fails only without memory.
            precondition(ok && length == 64, "Ed25519 signing failed")
            return signature
        }
    }

    /// Whether `signature` is `publicKey`'s (32 raw bytes) over `message`.
    public static func verify(_ signature: [UInt8], of message: [UInt8], publicKey: [UInt8]) -> Bool {
        guard signature.count == 64, publicKey.count == 32,
              let key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nil, publicKey, 32) else { return false }
        defer { EVP_PKEY_free(key) }
        let context = EVP_MD_CTX_new()!
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestVerifyInit(context, nil, nil, nil, key) == 1 else { return false }
        return message.withUnsafeBytes { body in
            EVP_DigestVerify(context, signature, 64, body.baseAddress, body.count) == 1
        }
    }

    /// The SubjectPublicKeyInfo DER of a raw Ed25519 public key (RFC 8410 §4): what a TLS
    /// peer's certificate carries, and what a P2P node ID is the SHA-256 of.
    public static func subjectPublicKeyInfo(_ publicKey: [UInt8]) -> [UInt8] {
        [0x30, 0x2A, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x03, 0x21, 0x00] + publicKey
    }
}
