import Glibc
import HarpKernel
import Logging

/// One admitted peer connection after the Hello: the block exchange over it (frames in
/// PeerFrame.swift). Three kinds of task share it, all on its loop:
///
/// - the reader, which only reads and never waits for a write: two nodes trading chunks fill
///   both directions at once, and a reader blocked on a send would deadlock with the other
///   side's (every reply it causes is a task of its own, through the frame writer);
/// - the server, which sends the chunks the peer asked for, in order, one at a time, paced by
///   the upload limits (a cancel removes a request that is still queued);
/// - the pinger: a ping every 10 s measures the round trip and keeps the peer talking, and a
///   peer silent for 30 s is dropped.
final class PeerSession: @unchecked Sendable {
    // @unchecked Sendable: every stored var is used only on `loop`'s thread (the reader,
    // server and pinger tasks and every `send` run there); other threads reach a session only
    // through `spawn`-ing onto its loop.
    let peer: NodeID
    let stream: TLSStream
    let swarm: Swarm
    let logger: Logger
    var loop: EventLoop { stream.loop }
    private let reader: FramedReader
    private let writer: FrameWriter

    /// Chunks to send, in order: requested, or pushed after a get-whole's manifest (with
    /// where it is read, looked up already).
    private var queue: [(id: ChunkID, at: Swarm.ChunkLocation?)] = []
    private var queueHead = 0
    private var servingNow: ChunkID?
    private var cancelledNow = false
    private lazy var serveWait = LoopWait(loop: loop)
    private let serveTimer = AsyncCompletion()
    private let fileRecord = AsyncCompletion()
    private let writeRecord = AsyncCompletion()
    private let paceTimer = AsyncCompletion()
    private let pingTimer = AsyncCompletion()
    private var receiveBuffer: UnsafeMutableRawBufferPointer?

    /// Roots the peer asked about: verified chunks of those are announced to it.
    private(set) var interested: Set<ChunkID> = []
    /// What we asked this peer for, and for which download.
    private var outstanding: [ChunkID: Transfer] = [:]
    /// Roots we asked this peer for whole (get-whole), until its manifest or no-manifest.
    private var wholeAsked: Set<ChunkID> = []
    private var receiving = RateMeter()
    private var pingSentAt: UInt64 = 0
    private(set) var roundTrip: Duration = .milliseconds(1)
    private var filling = false
    private var fillAgain = false
    private var pendingReplies = 0
    private(set) var closed = false

    static let silence: Duration = .seconds(30)
    static let pingInterval: Duration = .seconds(10)
    /// Requests a peer may queue with us (a pipeline of 32 MiB is 128 minimum-size chunks).
    static let maximumQueue = 1024
    /// Replies that may wait for the writer before the peer counts as flooding us.
    static let maximumPendingReplies = 256

    init(peer: NodeID, stream: TLSStream, reader: FramedReader, swarm: Swarm) {
        self.peer = peer
        self.stream = stream
        self.reader = reader
        self.swarm = swarm
        logger = swarm.logger
        writer = FrameWriter(stream: stream)
    }

    deinit {
        receiveBuffer?.deallocate()
    }

    /// Serves the connection until it ends (or the node stops and aborts the stream).
    func run() async {
        loop.assertInLoop()
        swarm.attach(self)
        let server = loop.spawn { await self.serve() }
        let pinger = loop.spawn { await self.ping() }
        let end = await read()
        closed = true
        serveWait.signal()
        if pingTimer.isPending { loop.cancel(pingTimer) }
        if serveTimer.isPending { loop.cancel(serveTimer) }
        stream.abort()
        await server.value
        await pinger.value
        for (id, transfer) in outstanding { transfer.cancelled(id, at: peer) }
        if !outstanding.isEmpty { swarm.wakeAll() }
        outstanding = [:]
        swarm.detach(self, reason: end)
    }

    // MARK: Reading

    /// Reads frames until the connection ends; returns why it ended.
    private func read() async -> SessionEnd {
        var decoder = PeerFrameDecoder(channels: swarm.channelTypes)
        while true {
            switch await reader.next(&decoder, timeout: Self.silence) {
            case .frame(let header, let headerLength, let payloadLength):
                if header.type == .chunk {
                    let id = ChunkID(bytes: Array(reader.buffer.readable[PeerFrameHeader.size..<headerLength]))
                    reader.buffer.consume(headerLength)
                    if let end = await receiveChunk(id, length: payloadLength) { return end }
                    continue
                }
                let held = await reader.hold(headerLength + payloadLength, timeout: Self.silence)
                if held <= 0 { return SessionEnd(read: held) }
                let body = Array(reader.buffer.readable[headerLength..<headerLength + payloadLength])
                reader.buffer.consume(headerLength + payloadLength)
                if body.count > 64 * 1024 { reader.buffer.shrinkIfIdle() }
                if header.type == .channel {
                    swarm.channel(for: header.code)?.received(type: header.code, body: body, from: PeerLink(peer: peer, session: self))
                    continue
                }
                do throws(PeerViolation) {
                    try dispatch(PeerMessage(type: header.type, body: body))
                } catch {
                    logger.warning("peer \(peer) broke the protocol: \(error); disconnected")
                    return .violation(error)
                }
            case .invalid(let violation):
                logger.warning("peer \(peer) broke the protocol: \(violation); disconnected")
                return .violation(violation)
            case .full:
                // Unreachable: the buffer holds the largest body a type allows.
                return .violation(.oversize(code: 0, bytes: reader.buffer.count, limit: reader.buffer.capacity))
            case .ended(let code):
                return SessionEnd(read: code)
            }
        }
    }

    /// Acts on one checked message; a message the session's state does not allow throws.
    private func dispatch(_ message: PeerMessage) throws(PeerViolation) {
        switch message {
        case .hello:
            throw .secondHello
        case .getManifest(let root):
            reply { session in await session.swarm.manifestMessage(for: root).frame }
        case .getWhole(let root):
            answerWhole(root)
        case .manifest(let root, let manifest):
            swarm.received(manifest, of: root, from: self)
            if wholeAsked.remove(root) != nil { expectWhole(root, manifest) }
        case .noManifest(let root):
            let transfer = swarm.transfer(root)
            transfer?.peerLacksManifest(peer)
            if wholeAsked.remove(root) != nil, let transfer { swarm.wholeFailed(transfer, at: peer) }
        case .haveQuery(let root):
            interested.insert(root)
            reply { session in await session.swarm.haveMessage(for: root).frame }
        case .have(let root, let holds):
            guard let transfer = swarm.transfer(root) else { return }
            if case .entries(let bits) = holds { transfer.peerHas(peer, entries: bits) } else { transfer.peerHas(peer, entries: nil) }
            fillSoon()
        case .haveUpdate(let root, let entries):
            guard let transfer = swarm.transfer(root) else { return }
            transfer.peerGained(peer, entries: entries)
            fillSoon()
        case .fetching(let root, let entries):
            swarm.transfer(root)?.peerFetching(peer, entries: entries)
        case .request(let id):
            try serveLater(id)
        case .cancel(let id):
            if servingNow == id { cancelledNow = true }
            if let index = queue[queueHead...].firstIndex(where: { $0.id == id }) { queue.remove(at: index) }
        case .dontHave(let id):
            if let transfer = outstanding.removeValue(forKey: id) {
                transfer.refused(id, by: peer)
                swarm.wholeFailed(transfer, at: peer)
                swarm.wakeAll()
            }
        case .ping(let nanos):
            reply { _ in PeerMessage.pong(nanos).frame }
        case .pong(let sent):
            if sent == pingSentAt, sent != 0 {
                roundTrip = .nanoseconds(Int64(EventLoop.preciseNanos() &- sent))
                pingSentAt = 0
            }
        }
    }

    /// Sends what `make` returns from a task of its own (see the type's comment on why the
    /// reader never writes).
    private func reply(_ make: @escaping @Sendable (PeerSession) async -> [UInt8]?) {
        answer { session in
            guard let frame = await make(session), !session.closed else { return }
            _ = await session.writer.write(frame, timeout: Self.silence)
        }
    }

    /// Runs `answer` (which writes) from a task of its own. A peer that keeps us answering
    /// faster than it reads is flooding.
    private func answer(_ answer: @escaping @Sendable (PeerSession) async -> Void) {
        pendingReplies += 1
        if pendingReplies > Self.maximumPendingReplies {
            logger.warning("peer \(peer) broke the protocol: \(PeerViolation.replyFlood(limit: Self.maximumPendingReplies)); disconnected")
            stream.abort()
            return
        }
        loop.spawn {
            defer { self.pendingReplies -= 1 }
            await answer(self)
        }
    }

    /// A get-whole: the manifest, then — for content of one chunk — that chunk, queued like a
    /// request once the manifest is written (so it arrives after it).
    private func answerWhole(_ root: ChunkID) {
        answer { session in
            let whole = await session.swarm.wholeAnswer(for: root)
            guard !session.closed, await session.writer.write(whole.message.frame, timeout: Self.silence) == 0, let push = whole.push else { return }
            do {
                try session.serveLater(push, at: whole.at)
            } catch {
                session.logger.warning("peer \(session.peer) broke the protocol: \(error); disconnected")
                session.stream.abort()
            }
        }
    }

    /// Queues a chunk to send (a request, or the push after a get-whole's manifest).
    private func serveLater(_ id: ChunkID, at location: Swarm.ChunkLocation? = nil) throws(PeerViolation) {
        guard queue.count - queueHead < Self.maximumQueue else { throw .requestFlood(limit: Self.maximumQueue) }
        queue.append((id, location))
        serveWait.signal()
    }

    /// This peer answered our get-whole with `manifest`: one chunk follows unasked (it counts
    /// as requested from the peer); content of several chunks is queried like any other.
    private func expectWhole(_ root: ChunkID, _ manifest: Manifest) {
        guard let transfer = swarm.transfer(root) else { return }
        if manifest.entries.count == 1 {
            if let id = transfer.expectPushed(from: peer) { outstanding[id] = transfer }
        } else {
            send(PeerMessage.haveQuery(root).frame)
        }
    }

    /// Ends the session from any thread (a penalized peer): on the loop.
    func end() {
        loop.spawn { self.stream.abort() }
    }

    /// Sends a frame from another thread (have-updates, cancels, queries): on the loop.
    func send(_ frame: [UInt8]) {
        loop.spawn {
            guard !self.closed else { return }
            _ = await self.writer.write(frame, timeout: Self.silence)
        }
    }

    /// A chunk's bytes: read whole into the receive buffer, hashed, written into the download
    /// it belongs to. A chunk nobody wants any more (an endgame loser) is read and dropped.
    private func receiveChunk(_ id: ChunkID, length: Int) async -> SessionEnd? {
        let buffer = receiveBuffer ?? .allocate(byteCount: FastCDC.maximumSize, alignment: 64)
        receiveBuffer = buffer
        let transfer = outstanding.removeValue(forKey: id) ?? swarm.transferWanting(id)
        let slot = transfer?.want(id)
        // Hashed as it arrives, while each piece is still in the cache.
        let digest = slot?.length == length ? SHA256() : nil
        var got = min(reader.buffer.count, length)
        buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: reader.buffer.readable[0..<got]))
        reader.buffer.consume(got)
        digest?.update(UnsafeRawBufferPointer(rebasing: buffer[0..<got]))
        while got < length {
            let count = await stream.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[got..<length]), timeout: Self.silence)
            if count <= 0 { return .insideChunk(StreamError(result: count)) }
            digest?.update(UnsafeRawBufferPointer(rebasing: buffer[got..<got + count]))
            got += count
        }
        let bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<length])
        receiving.add(length)
        swarm.statistics.received(length, from: peer)
        if let transfer, let slot {
            if let digest, digest.finalize() == id.bytes {
                if transfer.beginWrite() {
                    let failure = await write(bytes, at: slot.offsets, into: transfer)
                    transfer.endWrite()
                    if let failure { swarm.fail(transfer, failure) } else { swarm.delivered(id, to: transfer, from: self) }
                } else {
                    transfer.cancelled(id, at: peer)  // the download just completed or failed
                }
            } else {
                let strikes = transfer.rejected(id, from: peer)
                swarm.wholeFailed(transfer, at: peer)
                swarm.statistics.badChunk(from: peer)
                if strikes >= Transfer.maximumStrikes {
                    logger.error("peer \(peer) sent \(strikes) chunks that do not match their IDs: disconnected")
                    return .violation(.badChunks(strikes))
                }
                logger.warning("peer \(peer) sent chunk \(id) with other bytes: discarded, fetched elsewhere (strike \(strikes))")
                swarm.wakeAll()
            }
        } else if let transfer {
            transfer.cancelled(id, at: peer)  // not wanted any more: an endgame loser
        }
        await pace(length)
        fillSoon()
        return nil
    }

    /// Writes a verified chunk at each of its offsets; a failure (a full disk) is described.
    private func write(_ bytes: UnsafeRawBufferPointer, at offsets: [Int], into transfer: Transfer) async -> String? {
        for offset in offsets {
            var done = 0
            while done < bytes.count {
                let count = await loop.write(transfer.fd, UnsafeRawBufferPointer(rebasing: bytes[done...]), at: UInt64(offset + done),
                                             using: writeRecord)
                if count < 0 { return "cannot write \(transfer.partialPath): \(String(cString: strerror(-count)))" }
                if count == 0 { return "cannot write \(transfer.partialPath): no progress" }
                done += Int(count)
            }
        }
        return nil
    }

    /// Waits as the download limits say after `bytes` came in (the peer's sends then wait
    /// for TCP's window: the limit reaches the sender without a message).
    private func pace(_ bytes: Int) async {
        let wait = swarm.downloadDelay(bytes, from: peer)
        if wait > .zero { _ = await loop.sleep(for: wait, using: paceTimer) }
    }

    // MARK: Requesting

    /// The bytes to keep requested from this peer: its rate × (round trip + 250 ms), at least
    /// four average chunks, at most 32 MiB (libtorrent keeps ~3 s of a peer's rate queued; on
    /// loopback and LAN a quarter second already never lets the pipe run dry, and a shorter
    /// queue means less to cancel in the endgame).
    var pipelineBudget: Int {
        let seconds = Double(roundTrip.nanoseconds) / 1e9 + 0.25
        return min(max(Int(receiving.current() * seconds), 4 * FastCDC.averageSize), 32 << 20)
    }

    /// Fills the pipeline on this session's loop (from any thread).
    func fillSoon() {
        if loop.isCurrent, filling {
            fillAgain = true
            return
        }
        loop.spawn { await self.fill() }
    }

    private func fill() async {
        if filling {
            fillAgain = true
            return
        }
        filling = true
        defer { filling = false }
        repeat {
            fillAgain = false
            for transfer in swarm.activeTransfers() {
                let picked = transfer.nextRequests(for: peer, budget: pipelineBudget)
                guard !picked.isEmpty, !closed else { continue }
                var frames: [UInt8] = []
                frames.reserveCapacity(picked.count * (PeerFrameHeader.size + 32))
                for (id, _) in picked {
                    outstanding[id] = transfer
                    frames += PeerMessage.request(id).frame
                }
                swarm.announceFetching(transfer, entries: picked.map(\.entry), except: peer)
                _ = await writer.write(frames, timeout: Self.silence)
            }
        } while fillAgain && !closed
    }

    /// Asks the peer about a download: its manifest first if we lack it, then what it holds —
    /// or, `whole`, the manifest and (for one chunk) the chunk itself (get-whole).
    func query(_ transfer: Transfer, whole: Bool = false) {
        let root = transfer.root
        loop.spawn {
            guard !self.closed else { return }
            var frames: [UInt8] = []
            if transfer.manifest == nil, whole {
                self.wholeAsked.insert(root)
                frames = PeerMessage.getWhole(root).frame
            } else {
                if transfer.manifest == nil { frames += PeerMessage.getManifest(root).frame }
                frames += PeerMessage.haveQuery(root).frame
            }
            _ = await self.writer.write(frames, timeout: Self.silence)
        }
    }

    /// Tells the peer we no longer want a chunk it may still be sending.
    func cancel(_ id: ChunkID) {
        loop.spawn {
            guard !self.closed, self.outstanding.removeValue(forKey: id) != nil else { return }
            _ = await self.writer.write(PeerMessage.cancel(id).frame, timeout: Self.silence)
        }
    }

    // MARK: Serving

    private func serve() async {
        while !closed {
            guard queueHead < queue.count else {
                queue.removeAll(keepingCapacity: queue.count < 4096)
                queueHead = 0
                _ = await serveWait.wait(timeout: nil)
                continue
            }
            let (id, known) = queue[queueHead]
            queueHead += 1
            servingNow = id
            cancelledNow = false
            defer { servingNow = nil }
            let location = if let known { known } else { await swarm.locate(id) }
            let fd = location.map { $0.length <= FastCDC.maximumSize } == true
                ? await loop.open(location!.path, flags: O_RDONLY | O_CLOEXEC, using: fileRecord) : -ENOENT
            guard let location, fd >= 0 else {
                _ = await writer.write(PeerMessage.dontHave(id).frame, timeout: Self.silence)
                continue
            }
            defer { Glibc.close(fd) }
            let wait = swarm.uploadDelay(location.length, to: peer)
            if wait > .zero { _ = await loop.sleep(for: wait, using: serveTimer) }
            guard !closed, !cancelledNow else { continue }
            switch await writer.exclusive({ await self.send(id, from: fd, at: location.offset, length: location.length) }) {
            case .sent:
                swarm.statistics.sent(location.length, to: peer)
            case .unreadable:
                _ = await writer.write(PeerMessage.dontHave(id).frame, timeout: Self.silence)
            case .broken(let reason):
                logger.warning("sending chunk \(id) to peer \(peer) failed: \(reason); disconnected")
                stream.abort()
                return
            }
        }
    }

    private enum SendOutcome {
        case sent
        /// Nothing was sent: the file could not be read.
        case unreadable
        /// The frame was cut short: the connection cannot go on.
        case broken(String)
    }

    /// Streams a chunk frame from the file in copy-buffer slices (256 KiB): each slice is
    /// read and encrypted while it is still in the cache, and no chunk-sized buffer is held.
    /// (Reading the whole 4 MiB chunk first, then encrypting it, cost measurably more memory
    /// bandwidth on this 2-core machine.)
    private func send(_ id: ChunkID, from fd: Int32, at offset: Int, length: Int) async -> SendOutcome {
        let buffer = loop.copyBuffers.take()
        defer { loop.copyBuffers.give(buffer) }
        let header = PeerFrameHeader.header(.chunk, length: 32 + length)
        buffer.copyBytes(from: header)
        UnsafeMutableRawBufferPointer(rebasing: buffer[PeerFrameHeader.size..<PeerFrameHeader.size + 32]).copyBytes(from: id.bytes)
        var start = PeerFrameHeader.size + 32, done = 0
        while done < length {
            let want = min(BufferPool.copyChunk, length - done)
            var got = 0
            while got < want {
                let count = await loop.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[start + got..<start + want]),
                                            at: UInt64(offset + done + got), using: fileRecord)
                guard count > 0 else {
                    return done == 0 ? .unreadable : .broken("the file ended or failed mid-chunk (\(count))")
                }
                got += Int(count)
            }
            let sent = await stream.write(UnsafeRawBufferPointer(rebasing: buffer[0..<start + want]), timeout: Self.silence)
            guard sent == 0 else { return .broken("write failed (\(sent))") }
            done += want
            start = 0
        }
        return .sent
    }

    // MARK: Liveness

    private func ping() async {
        while !closed {
            let now = EventLoop.preciseNanos()
            pingSentAt = now
            _ = await writer.write(PeerMessage.ping(now).frame, timeout: Self.silence)
            if closed { break }
            _ = await loop.sleep(for: Self.pingInterval, using: pingTimer)
        }
    }

    /// Tells the peer, if it asked about its root, what `message` says (entries we verified,
    /// or just requested elsewhere).
    func announce(_ message: PeerMessage, root: ChunkID) {
        loop.spawn {
            guard !self.closed, self.interested.contains(root) else { return }
            _ = await self.writer.write(message.frame, timeout: Self.silence)
        }
    }
}
