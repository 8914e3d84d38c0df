import Foundation
@testable import FRP
import HarpKernel
import HarpTestSupport
import Testing

/// frp v1's arithmetic and framing against known answers taken from upstream frpc 0.65.
@Suite("frp protocol pieces")
struct FRPProtocolTests {
    @Test("privilege key = hex MD5(token + timestamp), as frpc computed it")
    func privilegeKey() {
        #expect(FRPAuth.privilegeKey(token: "secret", timestamp: 1_796_015_048) == "9d8f4177cd901df9871aeab5e57ac709")
        #expect(SecretComparison.equal("abc", "abc") && !SecretComparison.equal("abc", "abd") && !SecretComparison.equal("abc", "ab"))
    }

    @Test("cipher key = PBKDF2-HMAC-SHA1(token, \"frp\", 64, 16); the stream is AES-128-CFB as openssl enc makes it")
    func cipher() async throws {
        let key = FRPAuth.cipherKey(token: "secret")
        #expect(key.map { String(format: "%02x", $0) }.joined() == "8a69215e54aca50e54f738de611a87f9")
        let loop = try EventLoop(index: 0)
        defer { loop.shutdown() }
        let (a, b) = socketPair()
        // What the sender puts on the wire: its IV, then the ciphertext.
        let wire = await loop.spawn { () -> [UInt8] in
            let sender = CipherStream(SocketStream(loop: loop, fd: a), key: key)
            let raw = SocketStream(loop: loop, fd: b)
            _ = await sender.write(Array("hello frp".utf8), timeout: .seconds(5))
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 1)
            defer { buffer.deallocate() }
            var got: [UInt8] = []
            while got.count < 25 {
                let n = await raw.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[got.count...]), timeout: .seconds(5))
                if n <= 0 { break }
                got = Array(buffer[0..<(got.count + n)])
            }
            return got
        }.value
        #expect(wire.count == 25)
        let iv = wire.prefix(16).map { String(format: "%02x", $0) }.joined()
        let ciphertext = wire.dropFirst(16).map { String(format: "%02x", $0) }.joined()
        let reference = try shell("printf 'hello frp' | openssl enc -aes-128-cfb -K 8a69215e54aca50e54f738de611a87f9 -iv \(iv) | xxd -p").output
        #expect(ciphertext == reference)
        // And a CipherStream reads back what another wrote.
        let (c, d) = socketPair()
        let roundTrip = await loop.spawn { () -> String in
            let sender = CipherStream(SocketStream(loop: loop, fd: c), key: key)
            let receiver = CipherStream(SocketStream(loop: loop, fd: d), key: key)
            _ = await sender.write(Array("round trip".utf8), timeout: .seconds(5))
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 1)
            defer { buffer.deallocate() }
            let n = await receiver.read(into: buffer, timeout: .seconds(5))
            return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : "read \(n)"
        }.value
        #expect(roundTrip == "round trip")
    }

    @Test("message framing: frpc's Login decodes; lengths over 10240 or negative are refused")
    func framing() throws {
        let json = #"{"version":"0.65.0","os":"linux","arch":"arm64","privilege_key":"9d8f4177cd901df9871aeab5e57ac709","timestamp":1796015048,"metas":{"token":"secret"},"client_spec":{},"pool_count":1}"#
        let frame = [UInt8(ascii: "o")] + withUnsafeBytes(of: Int64(json.utf8.count).bigEndian, Array.init) + Array(json.utf8)
        let decoder = FRPFrameDecoder()
        guard case .frame(let type, 9, 181) = frame.withUnsafeBytes({ decoder.decode($0) }) else {
            Issue.record("not a frame")
            return
        }
        guard case .login(let login) = try FRPMessage.decode(type: type, body: Array(json.utf8).withUnsafeBytes { UnsafeRawBufferPointer($0) }) else {
            Issue.record("not a Login")
            return
        }
        #expect(login.metas == ["token": "secret"] && login.poolCount == 1 && login.timestamp == 1_796_015_048)
        let oversize = [UInt8(ascii: "o")] + withUnsafeBytes(of: Int64(10241).bigEndian, Array.init)
        if case .invalid = oversize.withUnsafeBytes({ decoder.decode($0) }) {} else { Issue.record("10241 accepted") }
        let negative = [UInt8(ascii: "o")] + withUnsafeBytes(of: Int64(-1).bigEndian, Array.init)
        if case .invalid = negative.withUnsafeBytes({ decoder.decode($0) }) {} else { Issue.record("-1 accepted") }
        #expect(throws: FRPProtocolError.self) { _ = try FRPMessage.decode(type: 0x01, body: UnsafeRawBufferPointer(start: nil, count: 0)) }
        #expect(throws: FRPProtocolError.self) { _ = try Array("{nope".utf8).withUnsafeBytes { try FRPMessage.decode(type: 0x6F, body: $0) } }
        // What harp sends round-trips.
        let response = FRPMessage.newProxyResponse(.init(proxyName: "p", remoteAddress: ":23000", error: "")).encoded()
        #expect(response[0] == UInt8(ascii: "2"))
        guard case .newProxyResponse(let back) = try response.withUnsafeBytes({ try FRPMessage.decode(type: $0[0], body: UnsafeRawBufferPointer(rebasing: $0[9...])) }) else {
            Issue.record("not a NewProxyResp")
            return
        }
        #expect(back.remoteAddress == ":23000")
    }

    @Test("a seeded fuzz of the frame decoder and message parser never crashes")
    func fuzz() {
        var generator = SeededGenerator(seed: 0xF4F1_2024)
        let decoder = FRPFrameDecoder()
        for _ in 0..<20_000 {
            let count = Int.random(in: 0...40, using: &generator)
            let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if case .frame(_, _, let length) = bytes.withUnsafeBytes({ decoder.decode($0) }) {
                #expect((0...10240).contains(length), "seed 0xF4F12024")
            }
            _ = try? bytes.withUnsafeBytes { try FRPMessage.decode(type: bytes.first ?? 0, body: $0) }
        }
    }

    @Test("config: tls mode, port ranges and the need for a secret are checked")
    func configuration() throws {
        #expect(throws: ConfigValueProblem.self) { _ = try FRPConfiguration.PortRange(parsing: "24000-23000") }
        #expect(throws: ConfigValueProblem.self) { _ = try FRPConfiguration.PortRange(parsing: "70000") }
        #expect(try FRPConfiguration.PortRange(parsing: "23000-23999").range == 23000...23999)
        var open = FRPConfiguration()
        open.sharedKey = ""
        #expect(throws: ConfigError.self) { try open.validate() }
    }
}
