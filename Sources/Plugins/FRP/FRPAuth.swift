import CShims
import Foundation

/// frp's shared-secret arithmetic (frp pkg/auth, golib crypto), all through OpenSSL.
enum FRPAuth {
    /// `privilege_key` = lowercase hex MD5(token ‖ decimal timestamp).
    static func privilegeKey(token: String, timestamp: Int64) -> String {
        let input = Array((token + String(timestamp)).utf8)
        var digest = [UInt8](repeating: 0, count: 16)
        var length: UInt32 = 0
        input.withUnsafeBytes { raw in
            _ = EVP_Digest(raw.baseAddress, raw.count, &digest, &length, EVP_md5(), nil)
        }
        return digest.map { String(format: "%02x", $0) }.joined()
    }

    /// The AES-128 key frp derives from the token: PBKDF2-HMAC-SHA1, salt "frp", 64 rounds.
    static func cipherKey(token: String) -> [UInt8] {
        var key = [UInt8](repeating: 0, count: 16)
        let password = Array(token.utf8)
        let salt = Array("frp".utf8)
        _ = password.withUnsafeBufferPointer { pw in
            salt.withUnsafeBufferPointer { s in
                PKCS5_PBKDF2_HMAC_SHA1(pw.baseAddress.map { UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self) }, Int32(pw.count),
                                       s.baseAddress, Int32(s.count), 64, 16, &key)
            }
        }
        return key
    }
}
