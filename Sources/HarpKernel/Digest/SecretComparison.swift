import CShims

/// Compares secrets (tokens, shared keys) in time that depends only on their length, through
/// OpenSSL's `CRYPTO_memcmp`: an early-exit `==` would let a client find a key byte by byte
/// from response times.
public enum SecretComparison {
    public static func equal(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        return x.withUnsafeBytes { xs in y.withUnsafeBytes { ys in CRYPTO_memcmp(xs.baseAddress, ys.baseAddress, x.count) == 0 } }
    }
}
