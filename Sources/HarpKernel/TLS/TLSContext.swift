import CShims
import Glibc

/// An OpenSSL `SSL_CTX`: certificates, verification and protocol settings shared by many
/// connections. TLS 1.2 is the floor (RFC 8996 retired 1.0 and 1.1; see `TLSVersion`).
public final class TLSContext: @unchecked Sendable {
    // @unchecked Sendable: an SSL_CTX is safe to share once configured (OpenSSL locks its
    // internal caches); harp never changes one after building it.
    let context: OpaquePointer
    /// For servers: other contexts chosen by SNI server name (lower-cased).
    private var byServerName: [String: TLSContext] = [:]
    /// Protocols offered (client) or accepted (server) with ALPN, in preference order.
    let alpn: [String]

    private init(method: OpaquePointer, alpn: [String], versions: ClosedRange<TLSVersion>) throws(TLSError) {
        guard let context = SSL_CTX_new(method) else { throw TLSError("SSL_CTX_new") }
        self.context = context
        self.alpn = alpn
        guard harp_ssl_ctx_set_versions(context, versions.lowerBound.wire, versions.upperBound.wire) == 1 else {
            throw TLSError("setting TLS versions \(versions.lowerBound.rawValue)-\(versions.upperBound.rawValue)")
        }
        SSL_CTX_set_options(context, HARP_SSL_OP_NO_RENEGOTIATION)
        // A write OpenSSL could not finish may be retried from another buffer (an array's
        // bytes first, then the copy `writeCopying` makes): allowed only in this mode.
        // RELEASE_BUFFERS: OpenSSL frees its own record buffers (~34 KiB) while a connection
        // is idle, as nginx has it do; `TLSStream` does the same with its input buffer (see
        // there for what each saves). The price: 3 more allocations per HTTPS keep-alive
        // request (14.1 -> 17.1, `bench/allocs.sh`); keep-alive req/s 1.02x in `bench/ab.sh`.
        _ = SSL_CTX_ctrl(context, SSL_CTRL_MODE, Int(SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS), nil)
    }

    deinit { SSL_CTX_free(context) }

    /// TLS 1.3 suites with AES-128-GCM first, and (on a server) the server's order deciding.
    /// OpenSSL's default puts AES-256-GCM first; for a bulk tunnel AES-128-GCM is as strong
    /// as it needs to be and measured ~25% less CPU per GB here (OpenSSH's aes128-gcm is the
    /// comparison). For contexts that carry bulk bytes between harp's own ends.
    public func preferAES128() {
        _ = SSL_CTX_set_ciphersuites(context, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256")
        SSL_CTX_set_options(context, HARP_SSL_OP_CIPHER_SERVER_PREFERENCE)
    }

    /// A server context from a PEM certificate chain and private key. With `clientCA`, clients
    /// must present a certificate signed by it (mutual TLS).
    public static func server(certificate: String, key: String, clientCA: String? = nil,
                              alpn: [String] = ["http/1.1"], versions: ClosedRange<TLSVersion> = TLSVersion.all) throws(TLSError) -> TLSContext {
        let tls = try TLSContext(method: TLS_server_method(), alpn: alpn, versions: versions)
        try tls.loadIdentity(certificate: certificate, key: key)
        if let clientCA {
            guard SSL_CTX_load_verify_locations(tls.context, clientCA, nil) == 1 else {
                throw TLSError("cannot load the client CA file \(clientCA)")
            }
            SSL_CTX_set_verify(tls.context, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
        }
        // With peer verification on, OpenSSL refuses to resume a session (a fatal
        // internal_error alert: "session id context uninitialized") unless the context names
        // the sessions it issued. Derived from the client CA, not the certificate: a renewed
        // certificate keeps sessions valid (reloads keep ticket keys for that), a changed CA
        // set does not.
        let identity = SHA256()
        identity.update(Array("harp TLS server".utf8))
        if let clientCA, let bytes = readWholeFile(clientCA) { identity.update(bytes) }
        let sessionContext = identity.finalize()
        guard SSL_CTX_set_session_id_context(tls.context, sessionContext, UInt32(sessionContext.count)) == 1 else {
            throw TLSError("setting the session id context")
        }
        tls.installServerCallbacks()
        return tls
    }

    /// A client context. Verification is on unless `verify` is false; `ca` replaces the
    /// system trust store. An optional certificate and key identify the client (mutual TLS).
    public static func client(ca: String? = nil, verify: Bool = true, certificate: String? = nil, key: String? = nil,
                              alpn: [String] = ["http/1.1"], versions: ClosedRange<TLSVersion> = TLSVersion.all) throws(TLSError) -> TLSContext {
        let tls = try TLSContext(method: TLS_client_method(), alpn: alpn, versions: versions)
        if verify {
            if let ca {
                guard SSL_CTX_load_verify_locations(tls.context, ca, nil) == 1 else { throw TLSError("cannot load the CA file \(ca)") }
            } else {
                SSL_CTX_set_default_verify_paths(tls.context)
            }
            SSL_CTX_set_verify(tls.context, SSL_VERIFY_PEER, nil)
        }
        if let certificate, let key { try tls.loadIdentity(certificate: certificate, key: key) }
        return tls
    }

    /// A context for peers that know each other by key, not by a CA (P2P nodes): TLS 1.3
    /// only, both sides present a certificate (a server demands one), and OpenSSL accepts any
    /// certificate whose signature checks out — self-signed is the norm. **The caller decides
    /// who the peer is**: after the handshake it must compare `TLSStream.peerPublicKey` with
    /// its list and close the connection when it is not there, before any other byte moves.
    public static func pinnedPeers(certificate: String, key: String, isServer: Bool, alpn: [String]) throws(TLSError) -> TLSContext {
        let tls = try TLSContext(method: isServer ? TLS_server_method() : TLS_client_method(), alpn: alpn, versions: .tls13 ... .tls13)
        try tls.loadIdentity(certificate: certificate, key: key)
        // The chain is not checked against any store (there is none); the handshake still
        // proves the peer holds the key of the certificate it sent (CertificateVerify).
        SSL_CTX_set_verify(tls.context, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT) { _, _ in 1 }
        if isServer {
            let sessionContext = Array("harp pinned peers".utf8)
            guard SSL_CTX_set_session_id_context(tls.context, sessionContext, UInt32(sessionContext.count)) == 1 else {
                throw TLSError("setting the session id context")
            }
            tls.installServerCallbacks()
        }
        return tls
    }

    private func loadIdentity(certificate: String, key: String) throws(TLSError) {
        guard access(certificate, R_OK) == 0 else {
            throw TLSError(plain: "cannot read the certificate file \(certificate): \(String(cString: strerror(errno)))")
        }
        guard access(key, R_OK) == 0 else {
            throw TLSError(plain: "cannot read the key file \(key): \(String(cString: strerror(errno)))")
        }
        guard SSL_CTX_use_certificate_chain_file(context, certificate) == 1 else {
            throw TLSError("\(certificate) is not a PEM certificate chain")
        }
        guard SSL_CTX_use_PrivateKey_file(context, key, SSL_FILETYPE_PEM) == 1 else {
            let reason = TLSError.drainOpenSSLErrors()
            if reason.contains("mismatch") {
                throw TLSError(plain: "the key in \(key) does not match the certificate in \(certificate) (\(reason))")
            }
            throw TLSError(plain: "\(key) is not a PEM private key: \(reason)")
        }
        guard SSL_CTX_check_private_key(context) == 1 else {
            throw TLSError("the key in \(key) does not match the certificate in \(certificate)")
        }
    }

    /// Takes over `other`'s session-ticket keys, so that clients holding tickets from it still
    /// resume here (a certificate reload would otherwise cost every client a full handshake).
    public func adoptTicketKeys(from other: TLSContext) {
        // 80 bytes: key name, HMAC key, AES key — OpenSSL's layout for this control.
        var keys = [UInt8](repeating: 0, count: 80)
        guard SSL_CTX_ctrl(other.context, SSL_CTRL_GET_TLSEXT_TICKET_KEYS, 80, &keys) == 1 else { return }
        _ = SSL_CTX_ctrl(context, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, 80, &keys)
    }

    /// Serves `name` (SNI, case-insensitive) with `context`'s certificate instead of this one's.
    public func add(serverName name: String, _ context: TLSContext) {
        byServerName[name.lowercased()] = context
    }

    private func installServerCallbacks() {
        let me = Unmanaged.passUnretained(self).toOpaque()
        harp_ssl_ctx_set_servername_callback(context, { ssl, _, arg in
            guard let ssl, let arg, let raw = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) else { return SSL_TLSEXT_ERR_OK }
            let tls = Unmanaged<TLSContext>.fromOpaque(arg).takeUnretainedValue()
            if let chosen = tls.byServerName[String(cString: raw).lowercased()] { SSL_set_SSL_CTX(ssl, chosen.context) }
            return SSL_TLSEXT_ERR_OK
        }, me)
        SSL_CTX_set_alpn_select_cb(context, { _, out, outLength, input, inputLength, arg in
            guard let arg, let input, let out, let outLength else { return SSL_TLSEXT_ERR_NOACK }
            let tls = Unmanaged<TLSContext>.fromOpaque(arg).takeUnretainedValue()
            // The client's list is length-prefixed names; pick our first that it offers.
            var offered: [(String, Int)] = []
            var i = 0
            while i < Int(inputLength) {
                let length = Int(input[i])
                guard i + 1 + length <= Int(inputLength) else { break }
                offered.append((String(decoding: UnsafeBufferPointer(start: input + i + 1, count: length), as: UTF8.self), i + 1))
                i += 1 + length
            }
            for wanted in tls.alpn {
                if let match = offered.first(where: { $0.0 == wanted }) {
                    out.pointee = input + match.1
                    outLength.pointee = UInt8(wanted.utf8.count)
                    return SSL_TLSEXT_ERR_OK
                }
            }
            return SSL_TLSEXT_ERR_NOACK
        }, me)
    }

    /// The wire form of the ALPN list (length-prefixed names).
    var alpnWire: [UInt8] {
        alpn.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) }
    }
}

/// A small file's bytes (a CA bundle), or nil when it cannot be read.
func readWholeFile(_ path: String) -> [UInt8]? {
    guard let file = fopen(path, "rb") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let count = fread(&chunk, 1, chunk.count, file)
        if count > 0 { bytes.append(contentsOf: chunk[0..<count]) }
        if count < chunk.count { break }
    }
    return bytes
}
