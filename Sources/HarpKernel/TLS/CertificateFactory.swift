import CShims
import Glibc

/// Keys and X.509 certificates made with OpenSSL, and written the safe way (keys 0600 from
/// the moment they exist, never replacing a file). Two users: the frp plugin's HaRP
/// certificate set (a CA and RSA leaves) and the p2p plugin's node identity (a self-signed
/// Ed25519 certificate).
public enum CertificateFactory {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    /// A new RSA key (HaRP's frpc side expects RSA 2048).
    public static func newRSAKey(bits: Int32 = 2048) throws(Failure) -> OpaquePointer {
        guard let context = EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, nil) else { throw failure("EVP_PKEY_CTX_new_id") }
        defer { EVP_PKEY_CTX_free(context) }
        var key: OpaquePointer?
        guard EVP_PKEY_keygen_init(context) == 1, EVP_PKEY_CTX_set_rsa_keygen_bits(context, bits) == 1,
              EVP_PKEY_keygen(context, &key) == 1, let key else { throw failure("generating an RSA key") }
        return key
    }

    /// A new Ed25519 key.
    public static func newEd25519Key() throws(Failure) -> OpaquePointer {
        guard let context = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nil) else { throw failure("EVP_PKEY_CTX_new_id") }
        defer { EVP_PKEY_CTX_free(context) }
        var key: OpaquePointer?
        guard EVP_PKEY_keygen_init(context) == 1, EVP_PKEY_keygen(context, &key) == 1, let key else {
            throw failure("generating an Ed25519 key")
        }
        return key
    }

    /// A certificate for `key`: self-signed when `issuer` is nil (a CA when `dnsName` is nil
    /// too), else a leaf signed by the issuer, valid for `days`. Ed25519 keys sign without a
    /// separate digest.
    public static func certificate(commonName: String, key: OpaquePointer, issuer: (certificate: OpaquePointer, key: OpaquePointer)?,
                                   dnsName: String?, isCA: Bool, days: Int) throws(Failure) -> OpaquePointer {
        guard let x509 = X509_new() else { throw failure("X509_new") }
        var serial = [UInt8](repeating: 0, count: 16)
        _ = RAND_bytes(&serial, 16)
        serial[0] &= 0x7F  // a positive serial
        let number = BN_bin2bn(serial, 16, nil)
        defer { BN_free(number) }
        X509_set_version(x509, 2)
        BN_to_ASN1_INTEGER(number, X509_get_serialNumber(x509))
        X509_gmtime_adj(X509_getm_notBefore(x509), 0)
        X509_gmtime_adj(X509_getm_notAfter(x509), days * 86_400)
        X509_set_pubkey(x509, key)
        let subject = X509_get_subject_name(x509)
        X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, commonName, -1, -1, 0)
        X509_set_issuer_name(x509, issuer.map { X509_get_subject_name($0.certificate) } ?? subject)
        var context = X509V3_CTX()
        X509V3_set_ctx(&context, issuer?.certificate ?? x509, x509, nil, nil, 0)
        var extensions: [(Int32, String)] = [(NID_subject_key_identifier, "hash")]
        if isCA {
            extensions += [(NID_basic_constraints, "critical,CA:TRUE"), (NID_key_usage, "critical,keyCertSign,cRLSign")]
        } else {
            extensions += [(NID_basic_constraints, "CA:FALSE"), (NID_key_usage, "critical,digitalSignature,keyEncipherment"),
                           (NID_ext_key_usage, "serverAuth,clientAuth")]
            if let dnsName { extensions.append((NID_subject_alt_name, "DNS:\(dnsName)")) }
        }
        for (nid, value) in extensions {
            guard let ext = X509V3_EXT_conf_nid(nil, &context, nid, value) else {
                X509_free(x509)
                throw failure("adding the extension \(value)")
            }
            X509_add_ext(x509, ext, -1)
            X509_EXTENSION_free(ext)
        }
        let signer = issuer?.key ?? key
        let digest = EVP_PKEY_get_id(signer) == EVP_PKEY_ED25519 ? nil : EVP_sha256()
        guard X509_sign(x509, signer, digest) > 0 else {
            X509_free(x509)
            throw failure("signing the certificate for \(commonName)")
        }
        return x509
    }

    /// A certificate's public key as SubjectPublicKeyInfo DER (nil if it has none).
    public static func publicKey(of certificate: OpaquePointer) -> [UInt8]? {
        var der: UnsafeMutablePointer<UInt8>?
        let length = i2d_PUBKEY(X509_get0_pubkey(certificate), &der)
        guard length > 0, let der else { return nil }
        defer { CRYPTO_free(der, #fileID, #line) }
        return Array(UnsafeBufferPointer(start: der, count: Int(length)))
    }

    public static func write(certificate: OpaquePointer, to path: String) throws(Failure) {
        try withNewFile(path, mode: 0o644) { PEM_write_bio_X509($0, certificate) == 1 }
    }

    public static func write(key: OpaquePointer, to path: String) throws(Failure) {
        try withNewFile(path, mode: 0o600) { PEM_write_bio_PrivateKey($0, key, nil, nil, 0, nil, nil) == 1 }
    }

    /// Like `mkdir -p`, new directories 0700.
    public static func makeDirectory(_ directory: String) throws(Failure) {
        var path = directory.hasPrefix("/") ? "" : "."
        for part in directory.split(separator: "/") {
            path += "/" + part
            if access(path, F_OK) != 0 && mkdir(path, 0o700) != 0 {
                throw Failure("cannot create \(path): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Creates `path` with `mode` from the start (a key is never readable by others, not even
    /// for a moment) and writes through a BIO; an existing file is an error.
    private static func withNewFile(_ path: String, mode: mode_t, _ body: (OpaquePointer) -> Bool) throws(Failure) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw Failure("cannot create \(path): \(String(cString: strerror(errno)))") }
        guard let bio = BIO_new_fd(fd, BIO_CLOSE) else {
            close(fd)
            throw failure("BIO_new_fd")
        }
        defer { BIO_free(bio) }
        guard body(bio) else { throw failure("writing \(path)") }
    }

    static func failure(_ what: String) -> Failure {
        Failure("\(what): \(TLSError("OpenSSL").description)")
    }
}
