import CShims
import Glibc

/// TLS over a socket the ring owns: OpenSSL reads ciphertext from a buffer the loop's receives
/// fill and writes records to a buffer its sends drain (a BIO over both, `tls_buffers.c`). The
/// plaintext side is `read`/`write`, so a plugin treats a TLS leg like a socket leg on the copy
/// path (splice cannot see plaintext: no `spliceDescriptor`; kTLS, which could, is not
/// available here). The stream owns its transport: `close()` sends close_notify and closes it.
///
/// Loop-confined: create and use it on the loop that owns the transport.
public final class TLSStream: ByteStream, @unchecked Sendable {
    // @unchecked Sendable: every member is touched only on `loop`'s thread.
    public let loop: EventLoop
    /// The socket carrying the ciphertext.
    let transport: SocketStream
    private let ssl: OpaquePointer
    /// What the BIO reads and writes: the offsets into `inbound` and `outbound`.
    private let buffers: UnsafeMutablePointer<harp_tls_buffers>
    /// The reader (an alert, a KeyUpdate answer) and the writer both flush: one at a time, or
    /// a partial send of one could be overtaken by the other's records.
    private let sendGate = WriteGate()
    /// The first failed send: records after a half-sent one are garbage to the peer, so every
    /// later flush reports this instead of sending again.
    private var sendFailure: TLSError?
    /// Ciphertext comes in here; a recv is posted on it whenever OpenSSL wants more.
    /// Allocated at the first receive, `initialInput` bytes; a receive that fills all its
    /// room grows it (×4, up to `maximumInput`); released again when a reader waits for the
    /// socket with nothing pending (`waitReadable`), so an idle connection holds none. With
    /// OpenSSL releasing its record buffers too, 2,000 idle HTTPS clients cost 20.7 KiB each
    /// instead of 34.9 (RSS while held, harp's TLS listener). Only the two together: this
    /// alone measured 36.0–36.5, OpenSSL's release alone 45.6 (two runs each).
    private var inbound: UnsafeMutableRawBufferPointer?
    /// Records wait here to be sent: a loop copy buffer, borrowed when OpenSSL first writes
    /// and given back once everything is sent, so an idle stream holds none. Records written
    /// while a send is in flight are appended behind it.
    private var outbound: UnsafeMutableRawBufferPointer?
    private var peerClosed = false
    /// Kept alive for the lifetime of the connection (OpenSSL holds the pointer).
    private let context: TLSContext

    /// A server-side stream (`serverName` nil) or a client-side one that sends `serverName`
    /// as SNI and, when the context verifies, checks the certificate against it.
    public init(transport: SocketStream, context: TLSContext, isServer: Bool, serverName: String? = nil) throws(TLSError) {
        guard let ssl = SSL_new(context.context) else { throw TLSError("SSL_new") }
        buffers = .allocate(capacity: 1)
        buffers.initialize(to: harp_tls_buffers(input: nil, input_start: 0, input_end: 0,
                                                output: nil, output_length: 0, output_capacity: 0, eof: 0))
        guard let bio = harp_bio_new_buffers(buffers) else {
            SSL_free(ssl)
            buffers.deallocate()
            throw TLSError("BIO_new")
        }
        self.loop = transport.loop
        self.transport = transport
        self.ssl = ssl
        self.context = context
        SSL_set_bio(ssl, bio, bio)  // the SSL now owns the BIO
        if isServer {
            SSL_set_accept_state(ssl)
        } else {
            SSL_set_connect_state(ssl)
            if let serverName {
                if IPRange.bytes(of: serverName) != nil {
                    // An address: no SNI (RFC 6066 §3 allows names only); verify the IP SAN.
                    _ = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), serverName)
                } else {
                    _ = harp_ssl_set_host_name(ssl, serverName)
                    _ = SSL_set1_host(ssl, serverName)
                }
            }
            let wire = context.alpnWire
            if !wire.isEmpty { _ = SSL_set_alpn_protos(ssl, wire, UInt32(wire.count)) }
        }
    }

    deinit {
        SSL_free(ssl)
        buffers.deallocate()
        inbound?.deallocate()
        outbound?.deallocate()  // not back to the pool: deinit may run off the loop
    }

    /// Received ciphertext OpenSSL has not read yet.
    private var pendingInput: Int { buffers.pointee.input_end - buffers.pointee.input_start }

    /// Runs the handshake; throws with the peer and OpenSSL's reason when it fails.
    /// The handshake, all of it within `timeout` (a deadline, not an idle limit: a client that
    /// sends a byte every few seconds cannot hold it longer).
    public func handshake(timeout: Duration) async throws(TLSError) {
        _ = try await drive(timeout: timeout, deadline: loop.now + timeout.nanoseconds, during: "TLS handshake") { SSL_do_handshake($0) }
    }

    /// Ciphertext on the socket: nothing to splice.
    public var spliceDescriptor: Int32? { nil }

    public var peer: SocketAddress? { transport.peer }

    /// The last TLS failure of a read or write (those report only `-EPROTO`), for the log.
    public private(set) var lastError: TLSError?

    /// Reads plaintext: a count, 0 when the peer closed (close_notify or end of stream), or
    /// `-errno` (`-ETIMEDOUT`, `-EPROTO` for a TLS failure, see `lastError`).
    public func read(into destination: UnsafeMutableRawBufferPointer, timeout: Duration? = nil, expectingWait: Bool = false) async -> Int {
        loop.assertInLoop()
        let count = destination.count
        do {
            var total = Int(try await drive(timeout: timeout, during: "TLS read", flush: false, expectingWait: expectingWait) {
                SSL_read($0, destination.baseAddress, Int32(count))
            })
            // SSL_read returns one record (16 KiB at most): take the others already received
            // too, so a large read is one large write downstream instead of many small ones.
            while total > 0 && total < count && (SSL_pending(ssl) > 0 || pendingInput > 0) {
                let more = SSL_read(ssl, destination.baseAddress! + total, Int32(count - total))
                guard more > 0 else {
                    // A partial record or an alert: the next read meets it (and reports it).
                    ERR_clear_error()
                    break
                }
                total += Int(more)
            }
            // Records handled on the way may have produced some (a KeyUpdate answer; the send
            // buffer stays attached through the loop for it). The plaintext is already the
            // caller's: a failed send here must not lose it — the next read or write meets the
            // failure again and reports it.
            try? await flush(timeout: timeout, waiting: false)
            return total
        } catch {
            lastError = error
            return error.timedOut ? -Int(ETIMEDOUT) : -Int(EPROTO)
        }
    }

    /// Writes all of `source` as plaintext: 0, or `-errno` as for `read`.
    public func write(_ source: UnsafeRawBufferPointer, timeout: Duration? = nil) async -> Int32 {
        loop.assertInLoop()
        var offset = 0
        do {
            // Encrypt every record first (the send buffer takes a copy round's worth), then
            // send them in one go: a 256 KiB write is one send instead of sixteen.
            while offset < source.count {
                let chunk = min(16 * 1024, source.count - offset)
                // Room for this record and for one the reader may add: OpenSSL never meets a
                // full buffer in the middle of a record (a write it must retry, which another
                // SSL call in between would break).
                if outboundRoom < 2 * Self.recordRoom { try await flush(timeout: timeout) }
                let written = try await drive(timeout: timeout, during: "TLS write", flush: false) {
                    SSL_write($0, source.baseAddress! + offset, Int32(chunk))
                }
                if written == 0 { return -EPIPE }
                offset += Int(written)
            }
            try await flush(timeout: timeout)
        } catch {
            lastError = error
            return error.timedOut ? -ETIMEDOUT : -EPROTO
        }
        return 0
    }

    /// An array needs no stable copy here: SSL_write encrypts into the send buffer before
    /// anything is awaited. (Only if that fills, or OpenSSL wants to read first — not after
    /// the handshake, renegotiation is off — does the rest take the copying path.)
    public func write(_ bytes: [UInt8], timeout: Duration?) async -> Int32 {
        var offset = 0
        attachOutbound()
        let encrypted = bytes.withUnsafeBytes { raw -> Bool in
            ERR_clear_error()
            while offset < raw.count {
                guard outboundRoom >= 2 * Self.recordRoom else { return false }  // the rest as above, flushing between
                let written = SSL_write(ssl, raw.baseAddress! + offset, Int32(min(16 * 1024, raw.count - offset)))
                guard written > 0 else { return false }
                offset += Int(written)
            }
            return true
        }
        guard encrypted else { return await writeCopying(Array(bytes[offset...]), timeout: timeout) }
        do {
            try await flush(timeout: timeout)
        } catch {
            lastError = error
            return error.timedOut ? -ETIMEDOUT : -EPROTO
        }
        return 0
    }

    /// Sends close_notify (a clean end, RFC 8446 §6.1); the socket stays open for reading.
    public func finishWriting() async {
        guard !sentCloseNotify, transport.isOpen else { return }
        sentCloseNotify = true
        attachOutbound()
        _ = SSL_shutdown(ssl)
        try? await flush(timeout: .seconds(5))
    }

    private var sentCloseNotify = false

    /// close_notify (without it a client cannot tell a finished connection from a truncated
    /// one), then the socket is closed.
    public func close() async {
        await finishWriting()
        await transport.close()
    }

    public func abort() { transport.abort() }

    /// Ready at once when OpenSSL holds plaintext or ciphertext not yet decrypted; otherwise
    /// when the socket is.
    public func waitReadable(timeout: Duration?) async -> Int32 {
        if SSL_pending(ssl) > 0 || pendingInput > 0 || peerClosed { return 1 }
        releaseInput()
        return await transport.waitReadable(timeout: timeout)
    }

    /// A TLS 1.3 server may send session tickets after the handshake, so bytes on an idle
    /// socket are not by themselves a sign of trouble: they are fed to OpenSSL, and only
    /// application data, close_notify, an alert or end of stream make the stream unusable.
    public func isQuietWhileIdle() -> Bool {
        guard transport.isOpen else { return false }
        defer {
            detachOutbound()  // unless OpenSSL wrote an answer: the next flush sends it
            releaseInput()  // unless OpenSSL left part of a record
        }
        while true {
            let room = inputRoom()
            attachOutbound()  // OpenSSL may answer what it reads (kept until the next flush)
            let received = Glibc.recv(transport.fd, room.baseAddress, room.count, Int32(MSG_DONTWAIT))
            if received < 0 { return errno == EAGAIN || errno == EWOULDBLOCK }
            if received == 0 { return false }
            buffers.pointee.input_end += received
            var byte: UInt8 = 0
            ERR_clear_error()
            let result = SSL_peek(ssl, &byte, 1)
            if result > 0 { return false }
            guard SSL_get_error(ssl, result) == SSL_ERROR_WANT_READ else {
                ERR_clear_error()
                return false
            }
        }
    }

    /// The protocol ALPN settled on, if any.
    public var negotiatedProtocol: String? {
        var data: UnsafePointer<UInt8>?
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &data, &length)
        guard let data, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: data, count: Int(length)), as: UTF8.self)
    }

    public var protocolVersion: String { String(cString: SSL_get_version(ssl)) }

    /// The peer's public key as SubjectPublicKeyInfo DER (what P2P node IDs hash), once the
    /// handshake is done; nil without a peer certificate.
    public var peerPublicKey: [UInt8]? {
        guard let certificate = SSL_get1_peer_certificate(ssl) else { return nil }
        defer { X509_free(certificate) }
        return CertificateFactory.publicKey(of: certificate)
    }
    public var sessionReused: Bool { harp_ssl_session_reused(ssl) != 0 }

    /// Calls `operation` until it succeeds, feeding OpenSSL from the socket. With `flush`
    /// (the handshake, shutdown) it sends what the operation wrote and waits for that; without
    /// (a reader, or a writer's loop that sends after its last record) the caller flushes, and
    /// before a receive it sends only if no send is in flight.
    /// Returns the operation's positive result, or 0 for a closed peer.
    private func drive(timeout idle: Duration?, deadline: UInt64? = nil, during what: String, flush: Bool = true, expectingWait: Bool = false,
                       _ operation: (OpaquePointer) -> Int32) async throws(TLSError) -> Int32 {
        ERR_clear_error()
        var timeout = idle
        while true {
            if let deadline {
                let now = loop.now
                guard now < deadline else { throw TLSError("\(what) with \(transport.peer.map { "\($0)" } ?? "peer") did not finish in time") }
                timeout = .nanoseconds(Int64(deadline - now))
            }
            // Room for whatever the operation writes, an alert included (an alert OpenSSL
            // could not write is never written).
            attachOutbound()
            let result = operation(ssl)
            if result > 0 {
                if flush { try await self.flush(timeout: timeout) }
                return result
            }
            switch SSL_get_error(ssl, result) {
            case SSL_ERROR_WANT_READ:
                try await self.flush(timeout: timeout, waiting: flush)
                if peerClosed { return 0 }
                // Only between records: a receive that continues one finds its bytes at once.
                // (Between records again after some, e.g. session tickets read first.)
                try await receive(timeout: timeout, during: what, expectingWait: expectingWait && SSL_has_pending(ssl) == 0)
            case SSL_ERROR_WANT_WRITE:
                // A full send buffer (writers keep room, so only a very large handshake flight).
                try await self.flush(timeout: timeout)
            case SSL_ERROR_ZERO_RETURN:
                return 0
            default:
                // Send OpenSSL's alert (if it made one) before giving up.
                let error = TLSError("\(what) with \(transport.peer.map { "\($0)" } ?? "peer") failed")
                try? await self.flush(timeout: .seconds(1))
                throw error
            }
        }
    }

    /// Whether the stream holds a send buffer (for tests: an idle one holds none).
    var holdsSendBuffer: Bool { outbound != nil }
    /// The input buffer's size now (for tests: 0 while a reader waits with nothing pending).
    var inputBufferSize: Int { inbound?.count ?? 0 }

    /// The free end of `inbound`, after moving what OpenSSL has not read yet (less than a
    /// record) to the front when the end is short of room for a record.
    private func inputRoom() -> UnsafeMutableRawBufferPointer {
        let inbound = inbound ?? resizeInput(to: Self.initialInput)
        let start = buffers.pointee.input_start, end = buffers.pointee.input_end
        if start == end {
            buffers.pointee.input_start = 0
            buffers.pointee.input_end = 0
        } else if start > 0, inbound.count - end < Self.recordRoom {
            memmove(inbound.baseAddress!, inbound.baseAddress! + start, end - start)
            buffers.pointee.input_start = 0
            buffers.pointee.input_end = end - start
        }
        return UnsafeMutableRawBufferPointer(rebasing: inbound[buffers.pointee.input_end...])
    }

    /// Moves what OpenSSL has not read yet into a new input buffer of `size` bytes.
    @discardableResult
    private func resizeInput(to size: Int) -> UnsafeMutableRawBufferPointer {
        let start = buffers.pointee.input_start, end = buffers.pointee.input_end
        // Initial-size buffers come from the loop's pool and go back to it (a kept-alive
        // connection takes one per request: 18.1 -> 17.1 allocations per HTTPS request).
        let fresh = size == Self.initialInput ? loop.tlsInputBuffers.take() : .allocate(byteCount: size, alignment: 16)
        if let inbound {
            if end > start { fresh.baseAddress!.copyMemory(from: inbound.baseAddress! + start, byteCount: end - start) }
            loop.tlsInputBuffers.recycle(inbound)
        }
        inbound = fresh
        buffers.pointee.input = fresh.baseAddress!.assumingMemoryBound(to: UInt8.self)
        buffers.pointee.input_start = 0
        buffers.pointee.input_end = end - start
        return fresh
    }

    /// Gives the input buffer back while OpenSSL has nothing left to read from it.
    private func releaseInput() {
        guard let inbound, pendingInput == 0 else { return }
        loop.tlsInputBuffers.recycle(inbound)
        self.inbound = nil
        buffers.pointee.input = nil
        buffers.pointee.input_start = 0
        buffers.pointee.input_end = 0
    }

    /// A full TLS record with its header and the largest expansion.
    static let recordRoom = 16 * 1024 + 2048
    /// Room for two records: a handshake flight or a request usually fits.
    static let initialInput = 2 * recordRoom
    /// Bulk transfers read up to this much ciphertext per receive, as much as a copy round
    /// moves (the buffer was a fixed 64 KiB; CPU per GB in `bench/frp.sh` did not move
    /// beyond that benchmark's noise either way).
    static let maximumInput = 256 * 1024

    /// Free bytes in the send buffer (a whole one when none is borrowed yet).
    private var outboundRoom: Int {
        outbound == nil ? loop.copyBuffers.size : buffers.pointee.output_capacity - buffers.pointee.output_length
    }

    private func attachOutbound() {
        guard outbound == nil else { return }
        let borrowed = loop.copyBuffers.take()
        outbound = borrowed
        buffers.pointee.output = borrowed.baseAddress!.assumingMemoryBound(to: UInt8.self)
        buffers.pointee.output_length = 0
        buffers.pointee.output_capacity = borrowed.count
    }

    private func detachOutbound() {
        guard let borrowed = outbound, buffers.pointee.output_length == 0 else { return }
        loop.copyBuffers.give(borrowed)
        outbound = nil
        buffers.pointee.output = nil
        buffers.pointee.output_capacity = 0
    }

    private func receive(timeout: Duration?, during what: String, expectingWait: Bool) async throws(TLSError) {
        var expectingWait = expectingWait
        if expectingWait && pendingInput == 0 {
            // The caller expects to wait (the next request on a kept-alive connection, a
            // response): wait for the socket without an input buffer, so that an idle
            // keep-alive connection holds none — it held 36 KiB, or 256 KiB after a download.
            releaseInput()
            let ready = await transport.waitReadable(timeout: timeout)
            if ready == -ETIMEDOUT { throw TLSError(timeoutDuring: what) }
            if ready < 0 { throw TLSError(plain: "\(what): \(String(cString: strerror(-ready)))") }
            expectingWait = false
        }
        let room = inputRoom()
        let received = await transport.read(into: room, timeout: timeout, expectingWait: expectingWait)
        if received == 0 {
            peerClosed = true
            // The BIO then reports the end, and OpenSSL the truncation if there is one.
            buffers.pointee.eof = 1
            return
        }
        guard received > 0 else {
            if received == -Int(ETIMEDOUT) { throw TLSError(timeoutDuring: what) }
            throw TLSError(plain: "\(what): \(String(cString: strerror(Int32(-received))))")
        }
        buffers.pointee.input_end += received
        // All the room taken: more is probably waiting (a bulk transfer), read more at once.
        if received == room.count, let inbound, inbound.count < Self.maximumInput {
            resizeInput(to: min(inbound.count * 4, Self.maximumInput))
        }
    }

    /// Sends the pending records. `waiting`: the caller needs them sent (a writer) and queues
    /// for the gate; otherwise (the reader, whose next receive must not wait behind a long
    /// send: two peers both blocked sending would never read again) it returns at once when a
    /// send is in flight, and sends one round at most — the sender in flight, or the writer
    /// that appended records meanwhile and flushes after, sends the rest.
    private func flush(timeout: Duration?, waiting: Bool = true) async throws(TLSError) {
        if let sendFailure { throw sendFailure }
        guard buffers.pointee.output_length > 0 else { return detachOutbound() }
        if !waiting && sendGate.isHeld { return }
        await sendGate.acquire()
        defer { sendGate.release() }
        while let outbound, buffers.pointee.output_length > 0 {
            if let sendFailure { throw sendFailure }
            let length = buffers.pointee.output_length
            let sent = await transport.write(UnsafeRawBufferPointer(rebasing: outbound[0..<length]), timeout: timeout)
            guard sent == 0 else {
                let failure = TLSError(plain: "sending TLS records: \(String(cString: strerror(-sent)))")
                sendFailure = failure
                buffers.pointee.output_length = 0
                detachOutbound()
                throw failure
            }
            // Records written while the send was in flight sit behind it: to the front.
            let rest = buffers.pointee.output_length - length
            if rest > 0 { memmove(outbound.baseAddress!, outbound.baseAddress! + length, rest) }
            buffers.pointee.output_length = rest
            if !waiting { break }
        }
        detachOutbound()
    }
}
