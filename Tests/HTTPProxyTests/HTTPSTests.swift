import Foundation
import Glibc
import HarpKernel
import HarpTestSupport
import Testing

/// HTTPS listeners and https upstreams through the real binary, with curl, openssl s_client
/// and nginx as peers.
@Suite("https through the harp binary", .serialized)
struct HTTPSTests {
    static let pki = Result { try TestCertificates() }

    static func config(pki: TestCertificates, port: UInt16, upstream: String, listener: String = "", route: String = "") -> String {
        """
        [harp]
        threads = 2
        shutdown_grace = "1s"
        [admin]
        listen = "127.0.0.1:\(freePort())"
        [http]
        listen = []
        [[http.listen_tls]]
        listen = "127.0.0.1:\(port)"
        cert = "\(pki.certificate("localhost"))"
        key = "\(pki.key("localhost"))"
        \(listener)
        [[http.listen_tls.sni]]
        name = "other.test"
        cert = "\(pki.certificate("other"))"
        key = "\(pki.key("other"))"
        [[http.routes]]
        path_prefix = "/"
        upstream = "\(upstream)"
        \(route)
        """
    }

    /// harp terminating HTTPS on a free port in front of a test origin (answers "ok").
    struct Served {
        let pki: TestCertificates
        let origin: HTTPTestOrigin
        let port: UInt16
        let harp: HarpProcess
        /// curl trusting the test CA, with localhost resolved to loopback, fetching `path`.
        func curl(_ path: String = "/x") -> String {
            "curl -s --cacert \(pki.ca) --resolve localhost:\(port):127.0.0.1 https://localhost:\(port)\(path)"
        }
    }

    static func serve(listener: String = "") throws -> Served {
        let pki = try pki.get()
        let origin = try HTTPTestOrigin()
        let port = freePort()
        do {
            let harp = try HarpProcess.serve(config(pki: pki, port: port, upstream: "http://\(origin.address)", listener: listener))
            return Served(pki: pki, origin: origin, port: port, harp: harp)
        } catch {
            origin.stop()
            throw error
        }
    }

    @Test("curl and s_client: TLS 1.2 and 1.3, SNI picks the certificate, ALPN, resumption")
    func handshakes() throws {
        let served = try Self.serve()
        defer { served.origin.stop() }
        let (pki, port, harp, curl) = (served.pki, served.port, served.harp, served.curl())
        #expect(try shell("\(curl) --tlsv1.2 --tls-max 1.2").output == "ok")
        #expect(try shell("\(curl) --tlsv1.3").output == "ok")
        let other = try shell("curl -sf --cacert \(pki.ca) --resolve other.test:\(port):127.0.0.1 https://other.test:\(port)/x").output
        #expect(other == "ok", "SNI other.test is served with its own certificate")
        let base = "openssl s_client -connect 127.0.0.1:\(port) -CAfile \(pki.ca) -alpn http/1.1"
        let s = try shell("printf '' | timeout 10 \(base) -servername other.test 2>&1").output
        #expect(s.contains("CN = other") || s.contains("CN=other"), "\(s.prefix(500))")
        #expect(s.contains("ALPN protocol: http/1.1"))
        let session = pki.directory + "/https-session.pem"
        _ = try shell("printf '' | timeout 10 \(base) -servername localhost -tls1_2 -sess_out \(session) 2>&1")
        let resumed = try shell("printf '' | timeout 10 \(base) -servername localhost -tls1_2 -sess_in \(session) 2>&1").output
        #expect(resumed.contains("Reused, TLSv1.2"))
        // s_client -ign_eof reads until harp closes, so harp's close_notify is always seen.
        let closing = try shell("printf 'GET /x HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' | timeout 10 \(base) -servername localhost -ign_eof -msg 2>&1").output
        #expect(closing.contains("<<< TLS 1.3, Alert [length 0002], warning close_notify"), "harp ends TLS connections with close_notify")
        let old = try shell("printf '' | timeout 10 \(base) -tls1_1 -cipher DEFAULT@SECLEVEL=0 2>&1").output
        #expect(!old.contains("Cipher is ") || old.contains("Cipher is (NONE)"), "TLS 1.1 refused: \(old.suffix(300))")
        #expect(try harp.stop() == 0)
    }

    @Test("TLS 1.3 KeyUpdate mid-connection: harp updates its keys too and goes on serving")
    func keyUpdate() throws {
        let served = try Self.serve()
        defer { served.origin.stop() }
        // s_client's interactive K asks the peer to update as well (RFC 8446 §4.6.3).
        let request = "GET /x HTTP/1.1\\nHost: localhost\\n"
        let script = "(printf '\(request)\\n'; sleep 0.5; printf 'K\\n'; sleep 0.5; printf '\(request)Connection: close\\n\\n'; sleep 1)"
            + " | timeout 10 openssl s_client -connect 127.0.0.1:\(served.port) -CAfile \(served.pki.ca) -servername localhost -crlf -msg 2>&1"
        let output = try shell(script).output
        #expect(output.components(separatedBy: "HTTP/1.1 200").count - 1 == 2, "both requests answered: \(output.suffix(600))")
        #expect(output.contains("<<< TLS 1.3, Handshake [length 0005], KeyUpdate"), "harp's own KeyUpdate")
        #expect(try served.harp.stop() == 0)
    }

    @Test("mutual TLS: a client certificate is required and checked; sessions resume (TLS 1.2 and 1.3)")
    func mutualTLS() throws {
        let served = try Self.serve(listener: "client_ca = \"\(try Self.pki.get().ca)\"")
        defer { served.origin.stop() }
        let (pki, harp, curl) = (served.pki, served.harp, served.curl())
        #expect(try shell("\(curl) --cert \(pki.certificate("client")) --key \(pki.key("client"))").output == "ok")
        let refused = try shell("\(curl)")
        #expect(refused.output != "ok")
        // A returning client offers its session: it must resume, not be failed with
        // internal_error (OpenSSL's "session id context uninitialized" under verification).
        let sClient = "timeout 10 openssl s_client -connect 127.0.0.1:\(served.port) -servername localhost -CAfile \(pki.ca)"
            + " -cert \(pki.certificate("client")) -key \(pki.key("client"))"
        let request = "printf 'GET /x HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n'"
        for version in ["-tls1_2", "-tls1_3"] {
            let session = pki.directory + "/mtls\(version).pem"
            _ = try shell("\(request) | \(sClient) \(version) -ign_eof -sess_out \(session) 2>&1")
            let again = try shell("\(request) | \(sClient) \(version) -ign_eof -sess_in \(session) 2>&1").output
            #expect(again.contains("Reused, TLSv1.\(version.last!)"), "\(version): \(again.suffix(400))")
        }
        #expect(try harp.stop() == 0)
        #expect(harp.stderr.contains("TLS handshake failed"))
    }

    @Test("1 GiB download and upload over HTTPS arrive intact")
    func bigTransfers() throws {
        let pki = try Self.pki.get()
        let nginx = try NginxOrigin(files: ["1g": 1 << 30])
        let origin = try HTTPTestOrigin()
        defer { origin.stop() }
        let port = freePort()
        let routes = "\n[[http.routes]]\npath_prefix = \"/hash\"\nupstream = \"http://\(origin.address)\"\n"
        let config = Self.config(pki: pki, port: port, upstream: "http://127.0.0.1:\(nginx.port)")
            .replacingOccurrences(of: "[[http.routes]]\npath_prefix = \"/\"", with: routes + "[[http.routes]]\npath_prefix = \"/\"")
        let harp = try HarpProcess.serve(config)
        let curl = "curl -sf --cacert \(pki.ca) --resolve localhost:\(port):127.0.0.1"
        let expected = try shell("sha256sum \(nginx.root)/1g | cut -d' ' -f1").output
        #expect(try shell("\(curl) https://localhost:\(port)/1g | sha256sum | cut -d' ' -f1").output == expected)
        #expect(try shell("\(curl) -T \(nginx.root)/1g https://localhost:\(port)/hash").output == "\(expected) \(1 << 30)")
        #expect(try harp.stop() == 0)
    }

    @Test("https upstream: verified against the configured CA; a wrong CA is refused (502)")
    func httpsUpstream() throws {
        let pki = try Self.pki.get()
        let nginx = try NginxOrigin(files: ["hello": 100], tls: (pki.certificate("localhost"), pki.key("localhost")))
        let stranger = try TestCertificates()
        defer { stranger.remove() }
        let port = freePort()
        let good = try HarpProcess.serve(Self.config(pki: pki, port: port, upstream: "https://localhost:\(nginx.port)",
                                                     route: "ca = \"\(pki.ca)\""))
        let curl = "curl -s -o /dev/null -w '%{http_code}' --cacert \(pki.ca) --resolve localhost:\(port):127.0.0.1 https://localhost:\(port)/hello"
        #expect(try shell(curl).output == "200")
        #expect(try good.stop() == 0)
        let wrong = try HarpProcess.serve(Self.config(pki: pki, port: port, upstream: "https://localhost:\(nginx.port)",
                                                      route: "ca = \"\(stranger.ca)\""))
        #expect(try shell(curl).output == "502")
        #expect(try wrong.stop() == 0)
        #expect(wrong.stderr.contains("certificate verify failed"))
        let unverified = try HarpProcess.serve(Self.config(pki: pki, port: port, upstream: "https://localhost:\(nginx.port)",
                                                           route: "verify = false"))
        #expect(try shell(curl).output == "200")
        #expect(try unverified.stop() == 0)
        #expect(unverified.stderr.contains("TLS verification is off"))
    }

    @Test("garbage and a truncated handshake on the TLS port: closed, counted, server fine")
    func badClients() throws {
        let served = try Self.serve()
        defer { served.origin.stop() }
        let (port, harp) = (served.port, served.harp)
        _ = try shell("head -c 5000 /dev/urandom | timeout 5 curl -s telnet://127.0.0.1:\(port) --max-time 2")
        _ = try shell("printf '\\x16\\x03\\x01\\x02\\x00\\x01\\x00' | timeout 5 curl -s telnet://127.0.0.1:\(port) --max-time 1")
        _ = try shell("printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' | timeout 5 curl -s telnet://127.0.0.1:\(port) --max-time 2")
        #expect(try shell(served.curl()).output == "ok")
        #expect(try harp.stop() == 0)
        #expect(harp.stderr.components(separatedBy: "TLS handshake failed").count - 1 >= 2)
    }

    @Test("SIGHUP reloads the certificate files without dropping open connections")
    func reload() throws {
        let pki = try Self.pki.get()
        let origin = try HTTPTestOrigin()
        defer { origin.stop() }
        let live = pki.directory + "/live"
        try FileManager.default.createDirectory(atPath: live, withIntermediateDirectories: true)
        _ = try shell("cp \(pki.certificate("localhost")) \(live)/cert.pem && cp \(pki.key("localhost")) \(live)/key.pem")
        let port = freePort()
        let config = Self.config(pki: pki, port: port, upstream: "http://\(origin.address)")
            .replacingOccurrences(of: "cert = \"\(pki.certificate("localhost"))\"", with: "cert = \"\(live)/cert.pem\"")
            .replacingOccurrences(of: "key = \"\(pki.key("localhost"))\"", with: "key = \"\(live)/key.pem\"")
        let harp = try HarpProcess.serve(config)
        let subject = "printf '' | timeout 10 openssl s_client -connect 127.0.0.1:\(port) -servername localhost 2>&1 | grep -m1 'subject='"
        #expect(try shell(subject).output.contains("localhost"))
        // A TLS 1.3 session from before the reload, to resume after it.
        let session = pki.directory + "/reload-session.pem"
        let sClient = "timeout 10 openssl s_client -connect 127.0.0.1:\(port) -servername localhost -CAfile \(pki.ca)"
        _ = try shell("printf 'GET /x HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' | \(sClient) -ign_eof -sess_out \(session) 2>&1")
        // An open keep-alive connection from before the reload.
        let open = Process()
        open.executableURL = URL(fileURLWithPath: "/bin/bash")
        let out = Pipe()
        open.standardOutput = out
        open.arguments = ["-c", "curl -sf --cacert \(pki.ca) --resolve localhost:\(port):127.0.0.1 https://localhost:\(port)/slow/1500 https://localhost:\(port)/x"]
        try open.run()
        usleep(300_000)
        _ = try shell("cp \(pki.certificate("other")) \(live)/cert.pem && cp \(pki.key("other")) \(live)/key.pem")
        kill(harp.pid, SIGHUP)
        try harp.waitForOutput("reloaded TLS certificate")
        #expect(try shell(subject).output.contains("other"), "new connections get the new certificate")
        let resumed = try shell("printf '' | \(sClient) -sess_in \(session) 2>&1").output
        #expect(resumed.contains("Reused, TLSv1.3"), "a ticket from before the reload still resumes: \(resumed.prefix(400))")
        open.waitUntilExit()
        #expect(String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self) == "slowok")
        #expect(try harp.stop() == 0)
    }

    @Test("protocols limits the TLS versions; naming one below 1.2 is a config error")
    func protocols() throws {
        let served = try Self.serve(listener: "protocols = [\"TLSv1.3\"]")
        defer { served.origin.stop() }
        let (pki, harp, curl) = (served.pki, served.harp, served.curl())
        #expect(try shell("\(curl) --tlsv1.3").output == "ok")
        #expect(try shell("\(curl) --tlsv1.2 --tls-max 1.2").output != "ok", "TLS 1.2 is not offered")
        #expect(try harp.stop() == 0)
        for (value, complaint) in [("[\"TLSv1.1\"]", "below TLS 1.2 are refused (RFC 8996)"), ("[]", "at least one of TLSv1.2, TLSv1.3"),
                                   ("[\"TLSv9\"]", "expected one of TLSv1.2, TLSv1.3")] {
            let bad = try HarpProcess.run(["serve"], config: Self.config(pki: pki, port: freePort(), upstream: "http://127.0.0.1:9",
                                                                        listener: "protocols = \(value)"))
            #expect(bad.status == 1)
            #expect(bad.stderr.contains(complaint), "\(value): \(bad.stderr)")
        }
    }

    @Test("a missing certificate or a key that does not match is a startup error naming the file")
    func startupErrors() throws {
        let pki = try Self.pki.get()
        let missing = try HarpProcess.run(["serve"], config: Self.config(pki: pki, port: freePort(), upstream: "http://127.0.0.1:9")
            .replacingOccurrences(of: pki.certificate("localhost"), with: "/nonexistent/cert.pem"))
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("cannot read the certificate file /nonexistent/cert.pem"), "\(missing.stderr)")
        let mismatch = try HarpProcess.run(["serve"], config: Self.config(pki: pki, port: freePort(), upstream: "http://127.0.0.1:9")
            .replacingOccurrences(of: "key = \"\(pki.key("localhost"))\"", with: "key = \"\(pki.key("client"))\""))
        #expect(mismatch.status == 1)
        #expect(mismatch.stderr.contains("does not match the certificate"), "\(mismatch.stderr)")
    }
}
