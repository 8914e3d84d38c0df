import CShims
import Foundation
import Glibc
@testable import HarpKernel
import HarpTestSupport
import Logging
import Synchronization
import Testing

/// TLS over the ring: harp's client and server streams against each other, and a TLS echo
/// server on a real listener against the `openssl s_client` command.
@Suite("TLS streams", .serialized)
struct TLSStreamTests {
    static let pki = Result { try TestCertificates() }

    /// Runs a server and a client stream over a socket pair on one loop; returns both
    /// handshake results (nil = success, else the error text) and the streams' facts.
    static func pair(server: TLSContext, client: TLSContext, serverName: String?,
                     exchange: (@Sendable (TLSStream, TLSStream) async throws -> Void)? = nil) async throws -> (String?, String?) {
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        let (a, b) = socketPair()
        // The streams own the sockets from here on (and close them when they go).
        let serverStream = try await loop.spawn {
            Result { try TLSStream(transport: SocketStream(loop: loop, fd: a), context: server, isServer: true) }
        }.value.get()
        let clientStream = try await loop.spawn {
            Result { try TLSStream(transport: SocketStream(loop: loop, fd: b), context: client, isServer: false, serverName: serverName) }
        }.value.get()
        let serverSide = loop.spawn { () -> String? in
            do { try await serverStream.handshake(timeout: .seconds(5)); return nil } catch {
                serverStream.abort()
                return "\(error)"
            }
        }
        let clientSide = loop.spawn { () -> String? in
            do { try await clientStream.handshake(timeout: .seconds(5)); return nil } catch {
                clientStream.abort()
                return "\(error)"
            }
        }
        let results = (await serverSide.value, await clientSide.value)
        if results == (nil, nil), let exchange {
            let failure = await loop.spawn { () -> String? in
                do { try await exchange(serverStream, clientStream); return nil } catch { return "\(error)" }
            }.value
            if let failure { throw TestFailure(failure) }
        }
        return results
    }

    @Test("handshake, ALPN, 4 MiB each way intact, close_notify ends the stream")
    func roundTrip() async throws {
        let pki = try Self.pki.get()
        let server = try TLSContext.server(certificate: pki.certificate("localhost"), key: pki.key("localhost"))
        let client = try TLSContext.client(ca: pki.ca)
        let facts = Mutex<[String]>([])
        let results = try await Self.pair(server: server, client: client, serverName: "localhost") { serverStream, clientStream in
            facts.withLock { $0 = [serverStream.negotiatedProtocol ?? "-", clientStream.protocolVersion] }
            let size = 4 << 20
            let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
            let received = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
            defer { payload.deallocate(); received.deallocate() }
            for i in 0..<size { payload[i] = UInt8(truncatingIfNeeded: i &* 31 &+ i >> 9) }
            // Client writes while the server reads (two tasks on the loop), then the reverse.
            let bytes = SharedBytes(pointer: UnsafeRawBufferPointer(payload))
            let writer = serverStream.loop.spawn { _ = await clientStream.write(bytes.pointer) }
            var total = 0
            while total < size {
                let count = await serverStream.read(into: UnsafeMutableRawBufferPointer(rebasing: received[total...]))
                guard count > 0 else { throw TestFailure("early end after \(total) bytes") }
                total += count
            }
            await writer.value
            guard memcmp(payload.baseAddress!, received.baseAddress!, size) == 0 else { throw TestFailure("payload differs") }
            // The bulk borrowed send buffers; once sent, each went back to the loop's pool.
            let heldAfterBulk = clientStream.holdsSendBuffer || serverStream.holdsSendBuffer
            // Everything read: a reader that waits for the socket gives the input buffer back.
            let inputAfterBulk = serverStream.inputBufferSize
            _ = await serverStream.waitReadable(timeout: .milliseconds(60))
            facts.withLock { $0.append(inputAfterBulk > 0 && serverStream.inputBufferSize == 0 ? "input released" : "input \(serverStream.inputBufferSize)") }
            // A reader that expects to wait (the next request on a kept-alive connection) waits
            // without an input buffer: the client's, allocated by the handshake, goes back.
            let inputBeforeWait = clientStream.inputBufferSize
            let ping = SharedBytes(pointer: UnsafeRawBufferPointer(rebasing: payload[0..<5]))
            let answer = serverStream.loop.spawn { () -> Int in
                try? await Task.sleep(for: .milliseconds(30))
                let inputWhileWaiting = clientStream.inputBufferSize
                _ = await serverStream.write(ping.pointer)
                return inputWhileWaiting
            }
            let pinged = await clientStream.read(into: UnsafeMutableRawBufferPointer(rebasing: received[0..<5]), expectingWait: true)
            let inputWhileWaiting = await answer.value
            guard pinged == 5 else { throw TestFailure("ping after the bulk: \(pinged)") }
            facts.withLock { $0.append(inputBeforeWait > 0 && inputWhileWaiting == 0 ? "waits without input" : "input \(inputBeforeWait) -> \(inputWhileWaiting)") }
            let held = heldAfterBulk || clientStream.holdsSendBuffer || serverStream.holdsSendBuffer
            facts.withLock { $0.append(held ? "a send buffer held while idle" : "released") }
            await clientStream.close()
            let end = await serverStream.read(into: UnsafeMutableRawBufferPointer(rebasing: received[0..<16]))
            guard end == 0 else { throw TestFailure("expected close_notify, got \(end) bytes") }
        }
        #expect(results.0 == nil && results.1 == nil, "\(results)")
        #expect(facts.withLock { $0 } == ["http/1.1", "TLSv1.3", "input released", "waits without input", "released"])
    }

    @Test("32 MiB each way at once, a reader and a writer task per side: a send that waits for the peer never stops the reader")
    func bothWaysAtOnce() async throws {
        let pki = try Self.pki.get()
        let server = try TLSContext.server(certificate: pki.certificate("localhost"), key: pki.key("localhost"))
        let client = try TLSContext.client(ca: pki.ca)
        let results = try await Self.pair(server: server, client: client, serverName: "localhost") { serverStream, clientStream in
            let size = 32 << 20
            let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
            defer { payload.deallocate() }
            for i in 0..<size { payload[i] = UInt8(truncatingIfNeeded: i &* 7 &+ i >> 11) }
            let bytes = SharedBytes(pointer: UnsafeRawBufferPointer(payload))
            // Each side writes all while it reads all; both socket buffers fill. A reader that
            // queued behind its own side's stalled send would never drain the other side.
            let writers = [serverStream, clientStream].map { stream in
                stream.loop.spawn { await stream.write(bytes.pointer, timeout: .seconds(10)) }
            }
            let readers = [serverStream, clientStream].map { stream in
                stream.loop.spawn { () -> Bool in
                    let received = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
                    defer { received.deallocate() }
                    var total = 0
                    while total < size {
                        let count = await stream.read(into: UnsafeMutableRawBufferPointer(rebasing: received[total...]), timeout: .seconds(10))
                        guard count > 0 else { return false }
                        total += count
                    }
                    return memcmp(bytes.pointer.baseAddress!, received.baseAddress!, size) == 0
                }
            }
            for writer in writers { guard await writer.value == 0 else { throw TestFailure("a write did not finish") } }
            for reader in readers { guard await reader.value else { throw TestFailure("a side did not read the other's 32 MiB intact") } }
        }
        #expect(results.0 == nil && results.1 == nil, "\(results)")
    }

    @Test("a relay between a TLS stream and a plain socket copies both ways and passes the end on")
    func tlsToPlainRelay() async throws {
        let pki = try Self.pki.get()
        let server = try TLSContext.server(certificate: pki.certificate("localhost"), key: pki.key("localhost"))
        let client = try TLSContext.client(ca: pki.ca)
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        let (tlsClientFD, tlsServerFD) = socketPair()
        let (plainFD, peerFD) = socketPair()
        loopSide(plainFD)
        let outcome = await loop.spawn { () -> String in
            guard let serverStream = try? TLSStream(transport: SocketStream(loop: loop, fd: tlsServerFD), context: server, isServer: true),
                  let clientStream = try? TLSStream(transport: SocketStream(loop: loop, fd: tlsClientFD), context: client, isServer: false,
                                                    serverName: "localhost")
            else { return "streams" }
            let accept = loop.spawn { try? await serverStream.handshake(timeout: .seconds(5)) }
            do { try await clientStream.handshake(timeout: .seconds(5)) } catch { return "handshake: \(error)" }
            await accept.value
            let relay = loop.spawn { await loop.relay(serverStream, SocketStream(loop: loop, fd: plainFD), idleTimeout: .seconds(5)) }
            let peer = SocketStream(loop: loop, fd: peerFD)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 1)
            defer { buffer.deallocate() }
            buffer.copyBytes(from: Array("hello".utf8))
            _ = await clientStream.write(UnsafeRawBufferPointer(rebasing: buffer[0..<5]))
            let atPeer = await peer.read(into: buffer, timeout: .seconds(5))
            guard atPeer == 5, Array(buffer[0..<5]) == Array("hello".utf8) else { return "plain side got \(atPeer)" }
            buffer.copyBytes(from: Array("world!".utf8))
            _ = await peer.write(UnsafeRawBufferPointer(rebasing: buffer[0..<6]), timeout: .seconds(5))
            let atClient = await clientStream.read(into: buffer, timeout: .seconds(5))
            guard atClient == 6, Array(buffer[0..<6]) == Array("world!".utf8) else { return "TLS side got \(atClient)" }
            await clientStream.close()                                 // close_notify ...
            let end = await peer.read(into: buffer, timeout: .seconds(5))  // ... arrives as FIN
            guard end == 0 else { return "expected EOF, got \(end)" }
            await peer.finishWriting()
            let result = await relay.value
            return "\(result.outcome) \(result.forwardBytes) \(result.backwardBytes)"
        }.value
        #expect(outcome == "finished 5 6")
    }

    @Test("SNI picks the certificate; a name the certificate does not cover fails verification")
    func serverNameIndication() async throws {
        let pki = try Self.pki.get()
        let server = try TLSContext.server(certificate: pki.certificate("localhost"), key: pki.key("localhost"))
        server.add(serverName: "other.test", try TLSContext.server(certificate: pki.certificate("other"), key: pki.key("other")))
        let client = try TLSContext.client(ca: pki.ca)
        let other = try await Self.pair(server: server, client: client, serverName: "other.test")
        #expect(other.1 == nil, "other.test verified against its own certificate: \(other)")
        let local = try await Self.pair(server: server, client: client, serverName: "localhost")
        #expect(local.1 == nil)
        let wrong = try await Self.pair(server: server, client: client, serverName: "wrong.test")
        #expect(wrong.1?.contains("certificate verify failed") == true, "\(wrong)")
    }

    @Test("mutual TLS: a client certificate from the CA is accepted, none is refused")
    func mutualTLS() async throws {
        let pki = try Self.pki.get()
        let server = try TLSContext.server(certificate: pki.certificate("localhost"), key: pki.key("localhost"), clientCA: pki.ca)
        let anonymous = try TLSContext.client(ca: pki.ca)
        let identified = try TLSContext.client(ca: pki.ca, certificate: pki.certificate("client"), key: pki.key("client"))
        let refused = try await Self.pair(server: server, client: anonymous, serverName: "localhost")
        #expect(refused.0?.contains("certificate") == true, "\(refused)")
        let accepted = try await Self.pair(server: server, client: identified, serverName: "localhost")
        #expect(accepted.0 == nil && accepted.1 == nil, "\(accepted)")
    }

    @Test("certificate problems name the file")
    func fileErrors() throws {
        let pki = try Self.pki.get()
        #expect(throws: TLSError.self) { _ = try TLSContext.server(certificate: "/nope.pem", key: pki.key("localhost")) }
        do {
            _ = try TLSContext.server(certificate: pki.certificate("localhost"), key: pki.key("other"))
            Issue.record("a mismatched key was accepted")
        } catch {
            #expect("\(error)".contains("does not match the certificate"), "\(error)")
        }
        do {
            _ = try TLSContext.server(certificate: "/nope.pem", key: pki.key("localhost"))
        } catch {
            #expect("\(error)".hasPrefix("cannot read the certificate file /nope.pem"))
        }
    }

    /// A TLS echo server on a loopback listener, for the openssl command line.
    final class EchoServer: @unchecked Sendable {
        // @unchecked Sendable: immutable after init; the listener runs on its own loop.
        let loop: EventLoop
        let group: ListenerGroup
        final class Count: Sendable { let value = Atomic<Int>(0) }
        let failures = Count()
        init(context: TLSContext) throws {
            let loop = try EventLoop(index: 0)
            self.loop = loop
            let failures = self.failures
            group = try ListenerGroup(address: loopback(0), loops: [loop], logger: .init(label: "test")) { fd, loop in
                loop.spawn {
                    guard let stream = try? TLSStream(transport: SocketStream(loop: loop, fd: fd), context: context, isServer: true) else { return }
                    do {
                        try await stream.handshake(timeout: .seconds(5))
                        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 1)
                        defer { buffer.deallocate() }
                        // One read echoed, then close_notify: s_client then exits at once.
                        let count = await stream.read(into: buffer, timeout: .seconds(5))
                        if count > 0 { _ = await stream.write(UnsafeRawBufferPointer(rebasing: buffer[0..<count])) }
                        await stream.close()
                    } catch {
                        failures.value.add(1, ordering: .relaxed)
                    }
                }
            }
        }
        var port: UInt16 { group.boundAddress.port! }
        deinit { loop.shutdown() }
    }

    @Test("openssl s_client: TLS 1.2 and 1.3 work, 1.1 is refused, sessions resume, garbage is survived")
    func opensslInterop() throws {
        let pki = try Self.pki.get()
        let server = try EchoServer(context: try TLSContext.server(certificate: pki.certificate("localhost"), key: pki.key("localhost")))
        let base = "openssl s_client -connect 127.0.0.1:\(server.port) -servername localhost -CAfile \(pki.ca) -verify_return_error -alpn http/1.1"
        for version in ["-tls1_2", "-tls1_3"] {
            let out = try shell("printf 'hello tls\\n' | timeout 10 \(base) \(version) -ign_eof 2>&1").output
            #expect(out.contains("hello tls"), "\(version): \(out.suffix(400))")
            #expect(out.contains("ALPN protocol: http/1.1"))
            #expect(out.contains("Verify return code: 0 (ok)"))
        }
        let old = try shell("printf 'x' | timeout 10 \(base) -tls1_1 -cipher DEFAULT@SECLEVEL=0 2>&1")
        #expect(old.status != 0 || !old.output.contains("x\n"), "TLS 1.1 must not be served: \(old.output.suffix(300))")
        let session = pki.directory + "/session.pem"
        _ = try shell("printf 'one\\n' | timeout 10 \(base) -tls1_2 -ign_eof -sess_out \(session) 2>&1")
        let resumed = try shell("printf 'two\\n' | timeout 10 \(base) -tls1_2 -ign_eof -sess_in \(session) 2>&1").output
        #expect(resumed.contains("Reused, TLSv1.2"), "\(resumed.suffix(600))")
        // Garbage and a cut-off handshake: those connections fail, the server goes on.
        _ = try shell("head -c 3000 /dev/urandom | timeout 5 curl -s telnet://127.0.0.1:\(server.port) --max-time 2")
        _ = try shell("printf '\\x16\\x03\\x01\\x02\\x00\\x01\\x00' | timeout 5 curl -s telnet://127.0.0.1:\(server.port) --max-time 1")
        let after = try shell("printf 'still here\\n' | timeout 10 \(base) -ign_eof 2>&1").output
        #expect(after.contains("still here"))
        #expect(server.failures.value.load(ordering: .relaxed) >= 2)
    }

    @Test("pinned peers: self-signed Ed25519 certificates on both sides, TLS 1.3, each side sees the other's public key; a peer without a certificate is refused")
    func pinnedPeers() async throws {
        let directory = NSTemporaryDirectory() + "harp-pinned-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try CertificateFactory.makeDirectory(directory)
        var publicKeys: [String: [UInt8]] = [:]
        for name in ["a", "b"] {
            let key = try CertificateFactory.newEd25519Key()
            let certificate = try CertificateFactory.certificate(commonName: name, key: key, issuer: nil, dnsName: nil, isCA: false, days: 10)
            try CertificateFactory.write(key: key, to: "\(directory)/\(name).key")
            try CertificateFactory.write(certificate: certificate, to: "\(directory)/\(name).crt")
            publicKeys[name] = CertificateFactory.publicKey(of: certificate)
            X509_free(certificate)
            EVP_PKEY_free(key)
        }
        let server = try TLSContext.pinnedPeers(certificate: "\(directory)/a.crt", key: "\(directory)/a.key", isServer: true, alpn: ["harp-p2p/1"])
        let client = try TLSContext.pinnedPeers(certificate: "\(directory)/b.crt", key: "\(directory)/b.key", isServer: false, alpn: ["harp-p2p/1"])
        let seen = Mutex<[[UInt8]?]>([])
        let results = try await Self.pair(server: server, client: client, serverName: nil) { serverStream, clientStream in
            seen.withLock { $0 = [serverStream.peerPublicKey, clientStream.peerPublicKey, [UInt8](clientStream.protocolVersion.utf8)] }
        }
        #expect(results.0 == nil && results.1 == nil, "\(results)")
        let facts = seen.withLock { $0 }
        #expect(facts[0] == publicKeys["b"], "the server sees the client's key")
        #expect(facts[1] == publicKeys["a"], "the client sees the server's key")
        #expect(facts[2].map { String(decoding: $0, as: UTF8.self) } == "TLSv1.3")
        // A client with no certificate at all does not get through the handshake.
        let anonymous = try TLSContext.client(verify: false, alpn: ["harp-p2p/1"])
        let refused = try await Self.pair(server: server, client: anonymous, serverName: nil)
        #expect(refused.0 != nil, "the server refuses a peer without a certificate")
    }
}

/// A buffer handed to a second task on the same loop; it outlives both (freed after `await`).
struct SharedBytes: @unchecked Sendable {
    // @unchecked Sendable: both tasks run on one loop thread and the owner waits for the other.
    let pointer: UnsafeRawBufferPointer
}
