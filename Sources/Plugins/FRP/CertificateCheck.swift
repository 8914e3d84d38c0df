import CShims
import Foundation

/// Checks a HaRP certificate directory the way frpc and harp will use it: each file parses,
/// the server and client certificates were signed by ca.crt, none has expired, and each key
/// belongs to its certificate. For `harp exapps check`: every problem comes with what to do.
public enum CertificateCheck {
    public struct Finding: Sendable {
        public let ok: Bool
        public let text: String
    }

    public static func check(directory: String, mutual: Bool) -> [Finding] {
        var findings: [Finding] = []
        let regenerate = "make a new set with `harp frp gen-certs --dir \(directory)` (or empty the directory and restart harp), then give the ExApps the new client certificate"
        guard let ca = load(directory + "/ca.crt") else {
            return [Finding(ok: false, text: "FRP certificates: \(directory)/ca.crt is missing or not a PEM certificate: \(regenerate)")]
        }
        defer { X509_free(ca) }
        let store = X509_STORE_new()!
        defer { X509_STORE_free(store) }
        X509_STORE_add_cert(store, ca)
        for (name, keyName) in [("server", "server.key"), ("client", "client.key")] where name == "server" || mutual {
            let path = "\(directory)/\(name).crt"
            guard let certificate = load(path) else {
                findings.append(Finding(ok: false, text: "FRP certificates: \(path) is missing or not a PEM certificate: \(regenerate)"))
                continue
            }
            defer { X509_free(certificate) }
            let context = X509_STORE_CTX_new()!
            defer { X509_STORE_CTX_free(context) }
            X509_STORE_CTX_init(context, store, certificate, nil)
            let verified = X509_verify_cert(context) == 1
            let reason = verified ? "" : String(cString: X509_verify_cert_error_string(Int(X509_STORE_CTX_get_error(context))))
            guard verified else {
                findings.append(Finding(ok: false, text: "FRP certificates: \(path) does not verify against ca.crt (\(reason)): \(regenerate)"))
                continue
            }
            guard keyMatches(certificate, keyPath: "\(directory)/\(keyName)") else {
                findings.append(Finding(ok: false, text: "FRP certificates: \(directory)/\(keyName) is missing or does not belong to \(name).crt: \(regenerate)"))
                continue
            }
            findings.append(Finding(ok: true, text: "FRP certificates: \(name).crt (\(commonName(certificate))) verifies against ca.crt, valid until \(notAfter(certificate))"))
        }
        return findings
    }

    private static func load(_ path: String) -> OpaquePointer? {
        guard let bio = BIO_new_file(path, "r") else { return nil }
        defer { BIO_free(bio) }
        return PEM_read_bio_X509(bio, nil, nil, nil)
    }

    private static func keyMatches(_ certificate: OpaquePointer, keyPath: String) -> Bool {
        guard let bio = BIO_new_file(keyPath, "r") else { return false }
        defer { BIO_free(bio) }
        guard let key = PEM_read_bio_PrivateKey(bio, nil, nil, nil) else { return false }
        defer { EVP_PKEY_free(key) }
        return X509_check_private_key(certificate, key) == 1
    }

    private static func commonName(_ certificate: OpaquePointer) -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        X509_NAME_get_text_by_NID(X509_get_subject_name(certificate), NID_commonName, &buffer, Int32(buffer.count))
        return Self.text(buffer)
    }

    /// A NUL-terminated C buffer as text.
    private static func text(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func notAfter(_ certificate: OpaquePointer) -> String {
        guard let bio = BIO_new(BIO_s_mem()) else { return "?" }
        defer { BIO_free(bio) }
        ASN1_TIME_print(bio, X509_get0_notAfter(certificate))
        var buffer = [CChar](repeating: 0, count: 64)
        let count = BIO_read(bio, &buffer, Int32(buffer.count - 1))
        return count > 0 ? Self.text(buffer) : "?"
    }
}
