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

    typealias Failure = CertificateFactory.Failure

    /// Writes the set into `directory` (created 0700 if missing). Refuses to replace files.
    static func generate(into directory: String, days: Int) throws(Failure) {
        try CertificateFactory.makeDirectory(directory)
        if let existing = files.first(where: { access(directory + "/" + $0, F_OK) == 0 }) {
            throw Failure("\(directory)/\(existing) exists; harp does not replace certificates")
        }
        let caKey = try CertificateFactory.newRSAKey()
        defer { EVP_PKEY_free(caKey) }
        let ca = try CertificateFactory.certificate(commonName: "harp-ca", key: caKey, issuer: nil, dnsName: nil, isCA: true, days: days)
        defer { X509_free(ca) }
        try CertificateFactory.write(certificate: ca, to: directory + "/ca.crt")
        for (file, name) in [("server", "harp.nc"), ("client", "harp.client.nc")] {
            let key = try CertificateFactory.newRSAKey()
            defer { EVP_PKEY_free(key) }
            let leaf = try CertificateFactory.certificate(commonName: name, key: key, issuer: (ca, caKey), dnsName: name, isCA: false, days: days)
            defer { X509_free(leaf) }
            try CertificateFactory.write(certificate: leaf, to: "\(directory)/\(file).crt")
            try CertificateFactory.write(key: key, to: "\(directory)/\(file).key")
        }
    }
}
