import Foundation
import Glibc
@testable import BlockExchange
import HarpKernel
import HarpTestSupport
@testable import MetadataSync

/// A listed peer under the test's control, for the hostile-peer tests: it holds a real node
/// identity (a `P2PNode`'s directory, never started), connects to a running node with TLS and
/// the Hello as any peer does, and then sends whatever frames the test crafts — built with
/// harp's own encoders (`SyncMessage`, `OperationCodec`) and signed with its own key
/// (`OperationChain`), or deliberately not.
final class HostilePeer: @unchecked Sendable {
    // @unchecked Sendable: used by one test at a time; the stream lives on `loop`.
    let identity: P2PNode
    let key: Ed25519.PrivateKey
    let loop: EventLoop
    private var stream: (any ByteStream)?
    private var generator = SeededGenerator(seed: 2207)
    /// The chain of the operations this peer made in its own name so far.
    private var head: OperationChain.Head

    init(identity: P2PNode) throws {
        self.identity = identity
        key = try Ed25519.PrivateKey(pemFile: identity.dir + "/" + NodeIdentity.keyFile)
        loop = try EventLoop(index: 0)
        head = OperationChain.Head(sequence: 0, hash: OperationChain.start(Self.id(of: identity)))
    }

    deinit {
        close()
        loop.shutdown()
    }

    static func id(of node: P2PNode) -> NodeID { NodeID(parsing: node.id)! }
    var id: NodeID { Self.id(of: identity) }

    /// Connects to `node` and exchanges Hellos.
    func connect(to node: P2PNode) throws {
        let context = try TLSContext.pinnedPeers(certificate: identity.dir + "/" + NodeIdentity.certificateFile,
                                                 key: identity.dir + "/" + NodeIdentity.keyFile, isServer: false, alpn: ["harp-p2p/1"])
        let address = loopback(node.port)
        stream = try run { () async throws -> any ByteStream in
            let stream = try await Dialer(connectTimeout: .seconds(5)).dial(address, on: self.loop, tls: context)
            // A node that refuses this peer closes right after the handshake: the Hello may
            // not get out, which `closedByNode` then tells.
            _ = await stream.write(PeerMessage.hello(PeerHello()).frame, timeout: .seconds(5))
            return stream
        }
    }

    /// Sends one frame of `type` (a metadata frame, or anything else).
    func send(type: UInt8, body: [UInt8]) throws {
        guard let stream else { throw TestFailure("not connected") }
        let frame = PeerFrameHeader.header(raw: type, length: body.count) + body
        let status = try run { await stream.write(frame, timeout: .seconds(10)) }
        guard status == 0 else { throw TestFailure("the node closed the connection (\(status))") }
    }

    func send(_ message: SyncMessage) throws {
        let (type, body) = message.frame
        try send(type: type, body: body)
    }

    /// The body of the first frame of `type` the node sends within `seconds` (those before it
    /// are read and dropped); nil when none came.
    func frame(of type: UInt8, within seconds: Double = 10) throws -> [UInt8]? {
        guard let stream else { throw TestFailure("not connected") }
        return try run {
            var pending: [UInt8] = []
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 8)
            defer { buffer.deallocate() }
            let deadline = EventLoop.preciseNanos() + UInt64(seconds * 1e9)
            while EventLoop.preciseNanos() < deadline {
                while pending.count >= PeerFrameHeader.size {
                    let length = Int(pending[1]) << 24 | Int(pending[2]) << 16 | Int(pending[3]) << 8 | Int(pending[4])
                    guard pending.count >= PeerFrameHeader.size + length else { break }
                    let body = Array(pending[PeerFrameHeader.size..<PeerFrameHeader.size + length])
                    let found = pending[0] == type
                    pending.removeFirst(PeerFrameHeader.size + length)
                    if found { return body }
                }
                let got = await stream.read(into: buffer, timeout: .milliseconds(200), expectingWait: false)
                if got == 0 || (got < 0 && got != -Int(ETIMEDOUT)) { return nil }
                if got > 0 { pending += UnsafeRawBufferPointer(rebasing: buffer[0..<got]) }
            }
            return nil
        }
    }

    /// Whether the node ends the connection within `seconds` (reading and dropping what it sends).
    func closedByNode(within seconds: Double = 10) throws -> Bool {
        guard let stream else { return true }
        return try run {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 8)
            defer { buffer.deallocate() }
            let deadline = EventLoop.preciseNanos() + UInt64(seconds * 1e9)
            while EventLoop.preciseNanos() < deadline {
                let got = await stream.read(into: buffer, timeout: .milliseconds(200), expectingWait: false)
                if got == 0 || (got < 0 && got != -Int(ETIMEDOUT)) { return true }
            }
            return false
        }
    }

    func close() {
        guard let stream else { return }
        self.stream = nil
        _ = try? run { stream.abort() }
    }

    // MARK: Operations

    /// A move in this peer's own name, not yet signed.
    func move(_ sequence: UInt64? = nil, wall: UInt64 = HostilePeer.now, counter: UInt32 = 0, item: ItemID? = nil,
              parent: ItemID = .root, name: String, directory: Bool = true, origin: NodeID? = nil) -> LoggedOperation {
        let origin = origin ?? id
        let timestamp = HLCTimestamp(wall: wall, counter: counter, node: origin)
        let item = item ?? ItemID.random(using: &generator)
        return LoggedOperation(origin: origin, sequence: sequence ?? head.sequence + 1,
                               operation: .move(.init(timestamp: timestamp, item: item, parent: parent, name: name, isDirectory: directory)))
    }

    /// Chains and signs `operations` (this peer's own, in order) as their origin would.
    func sign(_ operations: [LoggedOperation]) -> [LoggedOperation] {
        let signed = OperationChain.sign(operations, from: head, key: key)
        if let last = signed.last { head = OperationChain.Head(sequence: last.sequence, hash: last.chain!) }
        return signed
    }

    static var now: UInt64 { UInt64(Date().timeIntervalSince1970 * 1000) }

    /// A time for settled placements a test makes up (one second ago, by a node nobody knows).
    static var stamp: HLCTimestamp { HLCTimestamp(wall: now - 1000, counter: 0, node: NodeID(bytes: [UInt8](repeating: 7, count: 32))) }

    private func run<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
        let box = ResultBox<T>()
        let done = DispatchSemaphore(value: 0)
        loop.spawn {
            do { box.result = .success(try await body()) } catch { box.result = .failure(error) }
            done.signal()
        }
        guard done.wait(timeout: .now() + 60) == .success else { throw TestFailure("the hostile peer's operation did not finish") }
        return try box.result!.get()
    }

    private final class ResultBox<T>: @unchecked Sendable {
        // @unchecked Sendable: written by the loop task before it signals, read after the wait.
        var result: Result<T, any Error>?
    }
}
