import Foundation
import HarpKernel

/// The frp v1 control messages harp reads and writes (fatedier/frp pkg/msg): a type byte, an
/// int64 big-endian length, then JSON with Go's field names. Absent fields are zero values
/// (Go's `omitempty`), so every field decodes as optional.
enum FRPMessage: Sendable {
    case login(Login)
    case loginResponse(LoginResponse)
    case newProxy(NewProxy)
    case newProxyResponse(NewProxyResponse)
    case closeProxy(CloseProxy)
    case newWorkConnection(NewWorkConnection)
    case requestWorkConnection
    case startWorkConnection(StartWorkConnection)
    case ping(Ping)
    case pong(Pong)
    /// A message harp does not serve (visitors, NAT hole punching): refused by name.
    case unsupported(type: UInt8)

    /// Type bytes (pkg/msg/msg.go).
    enum TypeByte: UInt8 {
        case login = 0x6F                // 'o'
        case loginResponse = 0x31        // '1'
        case newProxy = 0x70             // 'p'
        case newProxyResponse = 0x32     // '2'
        case closeProxy = 0x63           // 'c'
        case newWorkConnection = 0x77    // 'w'
        case requestWorkConnection = 0x72  // 'r'
        case startWorkConnection = 0x73  // 's'
        case newVisitorConnection = 0x76   // 'v'
        case newVisitorConnectionResponse = 0x33  // '3'
        case ping = 0x68                 // 'h'
        case pong = 0x34                 // '4'
        case udpPacket = 0x75            // 'u'
        case natHoleVisitor = 0x69       // 'i'
        case natHoleClient = 0x6E        // 'n'
        case natHoleResponse = 0x6D      // 'm'
        case natHoleSid = 0x35           // '5'
        case natHoleReport = 0x36        // '6'
    }

    /// frp refuses longer messages (golib msg: MaxMsgLength); harp does too.
    static let maxLength = 10240
    static let headerSize = 9

    struct Login: Codable, Sendable {
        var version: String?
        var hostname: String?
        var os: String?
        var arch: String?
        var user: String?
        var privilegeKey: String?
        var timestamp: Int64?
        var runID: String?
        var clientID: String?
        var metas: [String: String]?
        var poolCount: Int?

        enum CodingKeys: String, CodingKey {
            case version, hostname, os, arch, user, timestamp, metas
            case privilegeKey = "privilege_key", runID = "run_id", clientID = "client_id", poolCount = "pool_count"
        }
    }

    struct LoginResponse: Codable, Sendable {
        var version: String
        var runID: String
        var error: String

        enum CodingKeys: String, CodingKey { case version, runID = "run_id", error }
    }

    struct NewProxy: Codable, Sendable {
        var proxyName: String?
        var proxyType: String?
        var useEncryption: Bool?
        var useCompression: Bool?
        var remotePort: Int?

        enum CodingKeys: String, CodingKey {
            case proxyName = "proxy_name", proxyType = "proxy_type", useEncryption = "use_encryption"
            case useCompression = "use_compression", remotePort = "remote_port"
        }
    }

    struct NewProxyResponse: Codable, Sendable {
        var proxyName: String
        var remoteAddress: String
        var error: String

        enum CodingKeys: String, CodingKey { case proxyName = "proxy_name", remoteAddress = "remote_addr", error }
    }

    struct CloseProxy: Codable, Sendable {
        var proxyName: String?

        enum CodingKeys: String, CodingKey { case proxyName = "proxy_name" }
    }

    struct NewWorkConnection: Codable, Sendable {
        var runID: String?
        var privilegeKey: String?
        var timestamp: Int64?

        enum CodingKeys: String, CodingKey { case runID = "run_id", privilegeKey = "privilege_key", timestamp }
    }

    struct StartWorkConnection: Codable, Sendable {
        var proxyName: String
        var sourceAddress: String
        var destinationAddress: String
        var sourcePort: Int
        var destinationPort: Int
        var error: String

        enum CodingKeys: String, CodingKey {
            case proxyName = "proxy_name", sourceAddress = "src_addr", destinationAddress = "dst_addr"
            case sourcePort = "src_port", destinationPort = "dst_port", error
        }
    }

    struct Ping: Codable, Sendable {
        var privilegeKey: String?
        var timestamp: Int64?

        enum CodingKeys: String, CodingKey { case privilegeKey = "privilege_key", timestamp }
    }

    struct Pong: Codable, Sendable {
        var error: String
    }

    struct Empty: Codable, Sendable {}

    /// Decodes one message body. Throws `FRPProtocolError` naming the type and the problem.
    static func decode(type: UInt8, body: UnsafeRawBufferPointer) throws(FRPProtocolError) -> FRPMessage {
        guard let known = TypeByte(rawValue: type) else { throw FRPProtocolError("unknown message type 0x\(String(type, radix: 16))") }
        let data = Data(body)
        let decoder = JSONDecoder()
        func decode<T: Decodable>(_: T.Type) throws(FRPProtocolError) -> T {
            do {
                return try decoder.decode(T.self, from: data)
            } catch {
                throw FRPProtocolError("bad JSON in a '\(Character(UnicodeScalar(type)))' message")
            }
        }
        switch known {
        case .login: return .login(try decode(Login.self))
        case .loginResponse: return .loginResponse(try decode(LoginResponse.self))
        case .newProxy: return .newProxy(try decode(NewProxy.self))
        case .newProxyResponse: return .newProxyResponse(try decode(NewProxyResponse.self))
        case .closeProxy: return .closeProxy(try decode(CloseProxy.self))
        case .newWorkConnection: return .newWorkConnection(try decode(NewWorkConnection.self))
        case .requestWorkConnection: return .requestWorkConnection
        case .startWorkConnection: return .startWorkConnection(try decode(StartWorkConnection.self))
        case .ping: return .ping(try decode(Ping.self))
        case .pong: return .pong(try decode(Pong.self))
        default: return .unsupported(type: type)
        }
    }

    /// The message on the wire: type byte, length, JSON.
    func encoded() -> [UInt8] {
        let encoder = JSONEncoder()
        let (type, json): (TypeByte, Data?)
        switch self {
        case .login(let body): (type, json) = (.login, try? encoder.encode(body))
        case .loginResponse(let body): (type, json) = (.loginResponse, try? encoder.encode(body))
        case .newProxy(let body): (type, json) = (.newProxy, try? encoder.encode(body))
        case .newProxyResponse(let body): (type, json) = (.newProxyResponse, try? encoder.encode(body))
        case .closeProxy(let body): (type, json) = (.closeProxy, try? encoder.encode(body))
        case .newWorkConnection(let body): (type, json) = (.newWorkConnection, try? encoder.encode(body))
        case .requestWorkConnection: (type, json) = (.requestWorkConnection, try? encoder.encode(Empty()))
        case .startWorkConnection(let body): (type, json) = (.startWorkConnection, try? encoder.encode(body))
        case .ping(let body): (type, json) = (.ping, try? encoder.encode(body))
        case .pong(let body): (type, json) = (.pong, try? encoder.encode(body))
        case .unsupported(let byte): return [byte, 0, 0, 0, 0, 0, 0, 0, 2, 0x7B, 0x7D]
        }
        let body = json.map { [UInt8]($0) } ?? Array("{}".utf8)
        var out: [UInt8] = [type.rawValue]
        out.reserveCapacity(Self.headerSize + body.count)
        withUnsafeBytes(of: Int64(body.count).bigEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: body)
        return out
    }
}

/// A peer broke the frp protocol: one log line names it, and that connection (only) closes.
struct FRPProtocolError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Finds frp message frames: type byte, int64 BE length (0...10240), JSON payload.
struct FRPFrameDecoder: FrameDecoder {
    func decode(_ bytes: UnsafeRawBufferPointer) -> FrameDecision<UInt8, String> {
        guard bytes.count >= FRPMessage.headerSize else { return .needMore }
        let length = Int64(bigEndian: bytes.loadUnaligned(fromByteOffset: 1, as: Int64.self))
        guard length >= 0 && length <= Int64(FRPMessage.maxLength) else {
            return .invalid("message length \(length) (allowed: 0-\(FRPMessage.maxLength))")
        }
        return .frame(bytes[0], headerLength: FRPMessage.headerSize, payloadLength: Int(length))
    }
}

extension FramedReader {
    /// Reads one whole frp message (header and JSON body); `timeout` bounds each wait.
    /// The next whole message; with `until` (the loop clock), by then at the latest.
    func readMessage(timeout: Duration?, until: UInt64? = nil) async throws(FRPProtocolError) -> FRPMessage {
        var decoder = FRPFrameDecoder()
        switch await nextWhole(&decoder, timeout: timeout, until: until) {
        case .frame(let type, let headerLength, let payloadLength):
            defer { buffer.consume(headerLength + payloadLength) }
            return try FRPMessage.decode(type: type, body: UnsafeRawBufferPointer(rebasing: buffer.readable[headerLength..<headerLength + payloadLength]))
        case .invalid(let reason):
            throw FRPProtocolError(reason)
        case .full:
            throw FRPProtocolError("message over \(FRPMessage.maxLength) bytes")
        case .ended(let result):
            throw FRPProtocolError(result == 0 ? "connection closed" : Self.describe(result))
        }
    }

    static func describe(_ result: Int) -> String {
        result == -Int(ETIMEDOUT) ? "timed out waiting for a message" : String(cString: strerror(Int32(-result)))
    }
}
