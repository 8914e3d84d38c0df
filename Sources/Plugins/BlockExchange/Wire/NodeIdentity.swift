import CShims
import Glibc
import HarpKernel

/// A node's ID: SHA-256 of its public key (the SubjectPublicKeyInfo DER of its certificate),
/// written as RFC 4648 base32 without padding in dash-separated groups of four, so that it
/// can be read aloud and compared by eye: `MFRG-GZDF-…` (13 groups).
public struct NodeID: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 32, "a node ID is 32 bytes")
        self.bytes = bytes
    }

    /// The ID of whoever holds the key whose SubjectPublicKeyInfo DER this is (a TLS peer's
    /// `peerPublicKey`).
    public init(publicKey der: [UInt8]) {
        let digest = SHA256()
        digest.update(der)
        self.init(bytes: digest.finalize())
    }

    /// The ID of whoever holds the key in `certificate` (an X509 *); nil for a certificate
    /// without a key (never an ID of nothing).
    public init?(certificate: OpaquePointer) {
        guard let key = CertificateFactory.publicKey(of: certificate) else { return nil }
        self.init(publicKey: key)
    }

    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".utf8)

    public var description: String {
        var characters: [UInt8] = []
        var buffer = 0, bits = 0
        for byte in bytes {
            buffer = buffer << 8 | Int(byte)
            bits += 8
            while bits >= 5 {
                characters.append(Self.alphabet[(buffer >> (bits - 5)) & 31])
                bits -= 5
            }
        }
        if bits > 0 { characters.append(Self.alphabet[(buffer << (5 - bits)) & 31]) }
        var text = ""
        for (index, character) in characters.enumerated() {
            if index > 0 && index % 4 == 0 { text += "-" }
            text.unicodeScalars.append(Unicode.Scalar(character))
        }
        return text
    }

    /// An ID as `description` writes it; dashes, spaces and case do not matter.
    public init?(parsing text: String) {
        var bytes: [UInt8] = []
        var buffer = 0, bits = 0
        for character in text.uppercased().utf8 where character != UInt8(ascii: "-") && character != UInt8(ascii: " ") {
            guard let value = Self.alphabet.firstIndex(of: character) else { return nil }
            buffer = (buffer << 5 | value) & 0xFFFF
            bits += 5
            if bits >= 8 {
                bytes.append(UInt8((buffer >> (bits - 8)) & 0xFF))
                bits -= 8
            }
        }
        // 52 characters: 256 bits of ID and 4 bits of zero padding.
        guard bytes.count == 32, bits == 4, buffer & 0xF == 0 else { return nil }
        self.init(bytes: bytes)
    }
}

/// The node's key and self-signed certificate in its state directory (`node.key`, mode 0600;
/// `node.crt`), made once by `harp storage init` and never replaced.
public enum NodeIdentity {
    public static let keyFile = "node.key"
    public static let certificateFile = "node.crt"

    /// Makes the identity in `directory`; refuses when one exists there.
    public static func create(in directory: String) throws(CertificateFactory.Failure) -> NodeID {
        try CertificateFactory.makeDirectory(directory)
        for file in [keyFile, certificateFile] where access(directory + "/" + file, F_OK) == 0 {
            throw CertificateFactory.Failure("\(directory)/\(file) exists: this directory already has a node identity (harp never replaces one; `harp storage id --dir \(directory)` shows it)")
        }
        let key = try CertificateFactory.newEd25519Key()
        defer { EVP_PKEY_free(key) }
        // The name is only a label: peers know each other by the key's hash, not by names.
        let certificate = try CertificateFactory.certificate(commonName: "harp node", key: key, issuer: nil, dnsName: nil, isCA: false,
                                                             days: 36_500)
        defer { X509_free(certificate) }
        try CertificateFactory.write(key: key, to: directory + "/" + keyFile)
        try CertificateFactory.write(certificate: certificate, to: directory + "/" + certificateFile)
        guard let id = NodeID(certificate: certificate) else { throw CertificateFactory.Failure("the new certificate has no public key") }
        return id
    }

    /// The ID of the identity in `directory`.
    public static func load(from directory: String) throws(CertificateFactory.Failure) -> NodeID {
        let path = directory + "/" + certificateFile
        guard let bio = BIO_new_file(path, "r") else {
            throw CertificateFactory.Failure("\(path) cannot be read: run `harp storage init --dir \(directory)` first")
        }
        defer { BIO_free(bio) }
        guard let certificate = PEM_read_bio_X509(bio, nil, nil, nil) else {
            throw CertificateFactory.Failure("\(path) is not a PEM certificate")
        }
        defer { X509_free(certificate) }
        guard let id = NodeID(certificate: certificate) else { throw CertificateFactory.Failure("\(path) holds no public key") }
        return id
    }
}
