import CShims
import Glibc
import HarpKernel

/// HaRP's FRP certificates, made with OpenSSL: a self-signed CA, a server certificate for
/// `harp.nc` and a client certificate for `harp.client.nc`, RSA 2048 / SHA-256, in
/// `ca.crt`, `server.crt`, `server.key`, `client.crt`, `client.key` (keys mode 0600) — the
/// files HaRP's start script writes and ExApp containers' frpc configurations point at.
enum CertificateSet {
    /// The CA's key is not kept: nothing else can be signed with it later, so a leaked
    /// directory cannot mint new client certificates.
    static let files = ["ca.crt", "server.crt", "server.key", "client.crt", "client.key"]

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Writes the set into `directory` (created 0700 if missing). Refuses to replace files.
    static func generate(into directory: String, days: Int) throws(Failure) {
        // Like `mkdir -p`, new directories 0700.
        var path = directory.hasPrefix("/") ? "" : "."
        for part in directory.split(separator: "/") {
            path += "/" + part
            if access(path, F_OK) != 0 && mkdir(path, 0o700) != 0 {
                throw Failure(description: "cannot create \(path): \(String(cString: strerror(errno)))")
            }
        }
        if let existing = files.first(where: { access(directory + "/" + $0, F_OK) == 0 }) {
            throw Failure(description: "\(directory)/\(existing) exists; harp does not replace certificates")
        }
        let caKey = try newKey()
        defer { EVP_PKEY_free(caKey) }
        let ca = try certificate(commonName: "harp-ca", key: caKey, issuer: nil, dnsName: nil, days: days)
        defer { X509_free(ca) }
        try write(certificate: ca, to: directory + "/ca.crt")
        for (file, name) in [("server", "harp.nc"), ("client", "harp.client.nc")] {
            let key = try newKey()
            defer { EVP_PKEY_free(key) }
            let leaf = try certificate(commonName: name, key: key, issuer: (ca, caKey), dnsName: name, days: days)
            defer { X509_free(leaf) }
            try write(certificate: leaf, to: "\(directory)/\(file).crt")
            try write(key: key, to: "\(directory)/\(file).key")
        }
    }

    private static func newKey() throws(Failure) -> OpaquePointer {
        guard let context = EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, nil) else { throw failure("EVP_PKEY_CTX_new_id") }
        defer { EVP_PKEY_CTX_free(context) }
        var key: OpaquePointer?
        guard EVP_PKEY_keygen_init(context) == 1, EVP_PKEY_CTX_set_rsa_keygen_bits(context, 2048) == 1,
              EVP_PKEY_keygen(context, &key) == 1, let key else { throw failure("generating an RSA key") }
        return key
    }

    private static func certificate(commonName: String, key: OpaquePointer, issuer: (certificate: OpaquePointer, key: OpaquePointer)?,
                                    dnsName: String?, days: Int) throws(Failure) -> OpaquePointer {
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
        if let dnsName {
            extensions += [(NID_basic_constraints, "CA:FALSE"), (NID_key_usage, "critical,digitalSignature,keyEncipherment"),
                           (NID_ext_key_usage, "serverAuth,clientAuth"), (NID_subject_alt_name, "DNS:\(dnsName)")]
        } else {
            extensions += [(NID_basic_constraints, "critical,CA:TRUE"), (NID_key_usage, "critical,keyCertSign,cRLSign")]
        }
        for (nid, value) in extensions {
            guard let ext = X509V3_EXT_conf_nid(nil, &context, nid, value) else {
                X509_free(x509)
                throw failure("adding the extension \(value)")
            }
            X509_add_ext(x509, ext, -1)
            X509_EXTENSION_free(ext)
        }
        guard X509_sign(x509, issuer?.key ?? key, EVP_sha256()) > 0 else {
            X509_free(x509)
            throw failure("signing the certificate for \(commonName)")
        }
        return x509
    }

    private static func write(certificate: OpaquePointer, to path: String) throws(Failure) {
        try withFile(path, mode: 0o644) { PEM_write_bio_X509($0, certificate) == 1 }
    }

    private static func write(key: OpaquePointer, to path: String) throws(Failure) {
        try withFile(path, mode: 0o600) { PEM_write_bio_PrivateKey($0, key, nil, nil, 0, nil, nil) == 1 }
    }

    /// Creates `path` with `mode` from the start (a key is never readable by others, not even
    /// for a moment) and writes through a BIO.
    private static func withFile(_ path: String, mode: mode_t, _ body: (OpaquePointer) -> Bool) throws(Failure) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw Failure(description: "cannot create \(path): \(String(cString: strerror(errno)))") }
        guard let bio = BIO_new_fd(fd, BIO_CLOSE) else {
            close(fd)
            throw failure("BIO_new_fd")
        }
        defer { BIO_free(bio) }
        guard body(bio) else { throw failure("writing \(path)") }
    }

    private static func failure(_ what: String) -> Failure {
        Failure(description: "\(what): \(TLSError("OpenSSL").description)")
    }
}
