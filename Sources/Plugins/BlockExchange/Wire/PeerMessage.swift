import HarpKernel

/// A block-exchange frame as a value: everything but a chunk's bytes (streamed as payload
/// straight into the download, see `PeerFrameDecoder`) and another plugin's channel frames.
/// A body is decoded and checked here, once — its length, its layout, a manifest against its
/// root, a deflated part against its limit — so the session only dispatches values that hold.
enum PeerMessage: Sendable, Equatable {
    case hello(PeerHello)
    case getManifest(ChunkID)
    case getWhole(ChunkID)
    /// The manifest of a root, checked against it (the root is carried so that no side hashes
    /// a large manifest twice: the sender looked it up by root, the receiver checked it).
    case manifest(ChunkID, Manifest)
    case noManifest(ChunkID)
    case haveQuery(ChunkID)
    case have(ChunkID, HaveList)
    case haveUpdate(ChunkID, entries: [Int])
    case fetching(ChunkID, entries: [Int])
    case request(ChunkID)
    case dontHave(ChunkID)
    case cancel(ChunkID)
    /// The sender's clock (ns), echoed in the pong.
    case ping(UInt64)
    case pong(UInt64)

    /// What a have frame says the sender holds of a root's chunks.
    enum HaveList: Sendable, Equatable {
        /// Every chunk (the content is in its folder).
        case all
        /// A bitfield over the manifest's entries (its length is checked by the download,
        /// which knows the manifest).
        case entries([UInt8])
    }

    var type: PeerFrameType {
        switch self {
        case .hello: .hello
        case .getManifest: .getManifest
        case .getWhole: .getWhole
        case .manifest: .manifest
        case .noManifest: .noManifest
        case .haveQuery: .haveQuery
        case .have: .have
        case .haveUpdate: .haveUpdate
        case .fetching: .fetching
        case .request: .request
        case .dontHave: .dontHave
        case .cancel: .cancel
        case .ping: .ping
        case .pong: .pong
        }
    }

    // MARK: Encoding

    /// The whole frame: header, then body. Manifests and bitfields go deflated when that is
    /// smaller; update lists are cut at `PeerLimits.updateIndices` (the caller sends the rest
    /// in further frames).
    var frame: [UInt8] {
        var body = ByteWriter(capacity: 64)
        switch self {
        case .hello(let hello):
            hello.write(into: &body)
        case .getManifest(let id), .getWhole(let id), .noManifest(let id), .haveQuery(let id), .request(let id), .dontHave(let id), .cancel(let id):
            body.raw(id.bytes)
        case .manifest(let root, let manifest):
            body.raw(root.bytes)
            Self.writeMaybeDeflated(manifest.encoded, into: &body)
        case .have(let root, .all):
            body.raw(root.bytes)
            body.u8(PeerFrameFlags.complete)
        case .have(let root, .entries(let bits)):
            body.raw(root.bytes)
            Self.writeMaybeDeflated(bits, into: &body)
        case .haveUpdate(let root, let entries), .fetching(let root, let entries):
            body.raw(root.bytes)
            for entry in entries.prefix(PeerLimits.updateIndices) { body.u32(UInt32(truncatingIfNeeded: entry)) }
        case .ping(let nanos), .pong(let nanos):
            body.u64(nanos)
        }
        return PeerFrameHeader.encode(type, body: body.bytes)
    }

    /// Flags, then `bytes` — deflated (and flagged so) when that is smaller.
    private static func writeMaybeDeflated(_ bytes: [UInt8], into body: inout ByteWriter) {
        if let deflated = Deflate.compressIfSmaller(bytes) {
            body.u8(PeerFrameFlags.deflated)
            body.raw(deflated)
        } else {
            body.u8(0)
            body.raw(bytes)
        }
    }

    // MARK: Decoding

    /// Decodes and checks the body of a frame of `type` (not a chunk or channel frame: those
    /// never come here). Anything that does not hold is the peer's violation.
    init(type: PeerFrameType, body: [UInt8]) throws(PeerViolation) {
        var reader = ByteReader(body)
        do {
            switch type {
            case .hello:
                // Longer Hellos are a later version's: the fields it adds are not ours to read.
                guard let hello = try PeerHello(reading: &reader) else { throw PeerViolation.notHello }
                self = .hello(hello)
                return
            case .getManifest: self = .getManifest(try reader.chunkID())
            case .getWhole: self = .getWhole(try reader.chunkID())
            case .noManifest: self = .noManifest(try reader.chunkID())
            case .haveQuery: self = .haveQuery(try reader.chunkID())
            case .request: self = .request(try reader.chunkID())
            case .dontHave: self = .dontHave(try reader.chunkID())
            case .cancel: self = .cancel(try reader.chunkID())
            case .manifest:
                let root = try reader.chunkID()
                let encoded = try Self.readMaybeDeflated(flags: try reader.u8(), &reader, type: type, limit: PeerLimits.manifestBytes)
                guard let manifest = Manifest(encoded: encoded), manifest.root == root else { throw PeerViolation.manifestNotOfRoot(root) }
                self = .manifest(root, manifest)
            case .have:
                let root = try reader.chunkID()
                let flags = try reader.u8()
                if flags & PeerFrameFlags.complete != 0 {
                    self = .have(root, .all)  // nothing follows
                } else {
                    let bits = try Self.readMaybeDeflated(flags: flags, &reader, type: type, limit: PeerLimits.manifestEntries / 8 + 1)
                    self = .have(root, .entries(bits))
                }
            case .haveUpdate, .fetching:
                let root = try reader.chunkID()
                var entries: [Int] = []
                entries.reserveCapacity(reader.remaining / 4)
                while !reader.atEnd { entries.append(Int(try reader.u32())) }
                self = type == .fetching ? .fetching(root, entries: entries) : .haveUpdate(root, entries: entries)
            case .ping: self = .ping(try reader.u64())
            case .pong: self = .pong(try reader.u64())
            case .chunk, .channel:
                throw PeerViolation.unknownType(type.rawValue)  // read as payload by the session
            }
        } catch let violation as PeerViolation {
            throw violation
        } catch {
            throw PeerViolation.malformed(type, bytes: body.count)
        }
        guard reader.atEnd else { throw PeerViolation.malformed(type, bytes: body.count) }
    }

    /// The rest of the body, inflated (within `limit`) when `flags` say it was deflated.
    private static func readMaybeDeflated(flags: UInt8, _ reader: inout ByteReader, type: PeerFrameType, limit: Int) throws -> [UInt8] {
        let bytes = reader.rest()
        guard flags & PeerFrameFlags.deflated != 0 else { return bytes }
        guard let inflated = bytes.withUnsafeBytes({ Deflate.decompress($0, limit: limit) }) else { throw PeerViolation.doesNotInflate(type) }
        return inflated
    }
}

/// The Hello: `harp-p2p` (8 bytes), the protocol version (u16) and capability bits (u32). A
/// peer with another major version is refused with a log line naming both.
struct PeerHello: Sendable, Equatable {
    static let magic = Array("harp-p2p".utf8)
    static let currentVersion: UInt16 = 1

    let version: UInt16
    let capabilities: UInt32

    init(version: UInt16 = currentVersion, capabilities: UInt32 = 0) {
        self.version = version
        self.capabilities = capabilities
    }

    /// nil when the bytes do not start with the magic (not a harp peer).
    init?(reading reader: inout ByteReader) throws(ByteReader.Underrun) {
        guard try reader.take(Self.magic.count) == Self.magic else { return nil }
        version = try reader.u16()
        capabilities = try reader.u32()
    }

    func write(into writer: inout ByteWriter) {
        writer.raw(Self.magic)
        writer.u16(version)
        writer.u32(capabilities)
    }
}

extension ByteReader {
    /// A 32-byte chunk ID or content root.
    mutating func chunkID() throws(Underrun) -> ChunkID { ChunkID(bytes: try take(32)) }
}
