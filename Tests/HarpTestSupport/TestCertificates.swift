import Foundation

/// A throwaway PKI made with the openssl command: a CA and certificates signed by it. By
/// default: server certificates for `localhost` and `other.test` and a client certificate, as
/// `ca.pem`, `<name>.pem`, `<name>.key`; `extension: "crt"` gives HaRP's FRP layout.
public struct TestCertificates: Sendable {
    public let directory: String
    public let fileExtension: String
    public var ca: String { directory + "/ca.\(fileExtension)" }
    public func certificate(_ name: String) -> String { directory + "/\(name).\(fileExtension)" }
    public func key(_ name: String) -> String { directory + "/\(name).key" }

    public static let standard = [("localhost", "DNS:localhost,IP:127.0.0.1"), ("other", "DNS:other.test"), ("client", "DNS:client.test")]

    /// `names`: (file name and CN, subjectAltName) for each certificate.
    public init(names: [(String, String)] = standard, extension fileExtension: String = "pem") throws {
        directory = NSTemporaryDirectory() + "harp-pki-\(UUID().uuidString)"
        self.fileExtension = fileExtension
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let d = directory, e = fileExtension
        var script = """
            set -e
            cd \(d)
            openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=harp-test-ca -keyout ca.key -out ca.\(e) 2>/dev/null
            """
        for (name, subject) in names {
            script += """

                openssl req -newkey rsa:2048 -nodes -subj /CN=\(name) -keyout \(name).key -out \(name).csr 2>/dev/null
                printf 'subjectAltName=\(subject)\\nextendedKeyUsage=serverAuth,clientAuth\\n' > \(name).ext
                openssl x509 -req -in \(name).csr -CA ca.\(e) -CAkey ca.key -CAcreateserial -days 2 -extfile \(name).ext -out \(name).\(e) 2>/dev/null
                """
        }
        let result = try shell(script)
        guard result.status == 0 else { throw TestFailure("openssl could not make test certificates: \(result.output)") }
    }

    public func remove() { try? FileManager.default.removeItem(atPath: directory) }
}
