import HarpKernel

/// Message bodies between the client and the upstream, in either direction: what was already
/// read goes first, the rest is spliced (known length, until close) or decoded and re-framed
/// (chunked).
extension ProxyConnection {
    enum BodyResult {
        case ok
        case clientFailed
        case upstreamFailed
        case tooLarge
        case invalid(HTTPError)
    }

    /// One direction a body moves in: where it comes from (with the bytes already read from
    /// there), where it goes, and which side to blame when a socket fails.
    struct BodyLeg {
        let source: any ByteStream
        let destination: any ByteStream
        let buffer: ReadBuffer
        let sourceTimeout: Duration
        let destinationTimeout: Duration
        let sourceFailed: BodyResult
        let destinationFailed: BodyResult
    }

    func forwardRequestBody(_ framing: BodyFraming, to upstream: any ByteStream, _ exchange: Exchange) async -> BodyResult {
        // From here the body cannot be sent again (bytes leave the client buffer, even an empty
        // chunked body's terminator): a failed exchange is not retried.
        if framing != .none { exchange.requestBodyStarted = true }
        let leg = BodyLeg(source: client, destination: upstream, buffer: inbound,
                          sourceTimeout: config.clientTimeout.duration, destinationTimeout: config.serverTimeout.duration,
                          sourceFailed: .clientFailed, destinationFailed: .upstreamFailed)
        return await forwardBody(framing, leg, rechunk: true, limit: config.maxBodySize) { exchange.requestBytes += $0 }
    }

    func forwardResponseBody(_ framing: BodyFraming, from upstream: any ByteStream, buffered response: ReadBuffer,
                                     rechunk: Bool, _ exchange: Exchange) async -> BodyResult {
        let leg = BodyLeg(source: upstream, destination: client, buffer: response,
                          sourceTimeout: config.serverTimeout.duration, destinationTimeout: config.clientTimeout.duration,
                          sourceFailed: .upstreamFailed, destinationFailed: .clientFailed)
        return await forwardBody(framing, leg, rechunk: rechunk, limit: 0) { exchange.responseBytes += $0 }
    }

    /// Moves one body: bytes already buffered first, then the rest — spliced when its length
    /// is known or it runs to close, decoded and re-framed when chunked (`rechunk: false`
    /// writes the plain data, for HTTP/1.0 clients). `limit` > 0 caps a chunked body (413).
    private func forwardBody(_ framing: BodyFraming, _ leg: BodyLeg, rechunk: Bool, limit: Int,
                             counted: (Int) -> Void) async -> BodyResult {
        switch framing {
        case .none:
            return .ok
        case .length, .untilClose:
            let count: Int
            if case .length(let length) = framing { count = length } else { count = Int.max }
            let buffered = min(count, leg.buffer.count)
            if buffered > 0 {
                let sent = await leg.destination.write(UnsafeRawBufferPointer(rebasing: leg.buffer.readable[0..<buffered]),
                                                       timeout: leg.destinationTimeout)
                leg.buffer.consume(buffered)
                guard sent == 0 else { return leg.destinationFailed }
                counted(buffered)
            }
            guard count > buffered else { return .ok }
            // The rest goes socket -> pipe -> socket without entering user space.
            let result = await loop.transfer(from: leg.source, to: leg.destination, count: count - buffered,
                                             idleTimeout: leg.sourceTimeout)
            counted(result.forwardBytes)
            switch result.outcome {
            case .finished: return .ok
            case .endedEarly: return count == Int.max ? .ok : leg.sourceFailed  // until-close ends at EOF
            case .failed(let side, _): return side == 0 ? leg.sourceFailed : leg.destinationFailed
            case .idleTimeout: return leg.sourceFailed
            }
        case .chunked:
            var decoder = ChunkedDecoder()
            var out: [UInt8] = []
            var total = 0
            while true {
                out.removeAll(keepingCapacity: true)
                let consumed: Int
                let readable = leg.buffer.readable
                do {
                    consumed = try decoder.feed(readable) { event in
                        switch event {
                        case .data(let range):
                            total += range.count
                            if rechunk {
                                Self.appendChunk(readable, range, to: &out)
                            } else {
                                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: readable[range]))
                            }
                        case .end(let trailers):
                            if rechunk { Self.appendLastChunk(trailers, to: &out) }
                        }
                    }
                } catch {
                    return .invalid(error)
                }
                leg.buffer.consume(consumed)
                if limit > 0 && total > limit { return .tooLarge }
                if !out.isEmpty {
                    guard await leg.destination.write(out, timeout: leg.destinationTimeout) == 0 else {
                        return leg.destinationFailed
                    }
                }
                if decoder.isDone {
                    counted(total)
                    return .ok
                }
                let space = leg.buffer.writable
                guard !space.isEmpty else { return .invalid(.bad("chunk line too long")) }
                let received = await leg.source.read(into: space, timeout: leg.sourceTimeout)
                guard received > 0 else { return leg.sourceFailed }
                leg.buffer.didWrite(Int(received))
                // Decoded chunks are consumed whole: a large chunked body crossed 4 KiB per round.
                leg.buffer.growIfFilled(Int(received), room: space.count)
            }
        }
    }

    /// `<hex size>\r\n<data>\r\n`: harp writes every chunk header itself (no extensions).
    static func appendChunk(_ source: UnsafeRawBufferPointer, _ range: Range<Int>, to out: inout [UInt8]) {
        guard !range.isEmpty else { return }
        out.append(contentsOf: String(range.count, radix: 16).utf8)
        out.append(0x0D); out.append(0x0A)
        out.append(contentsOf: UnsafeRawBufferPointer(rebasing: source[range]))
        out.append(0x0D); out.append(0x0A)
    }

    static func appendLastChunk(_ trailers: [(String, String)], to out: inout [UInt8]) {
        out.append(contentsOf: "0\r\n".utf8)
        for (name, value) in trailers {
            HTTPHeaders.appendBytes(of: name, to: &out)
            out.append(contentsOf: ": ".utf8)
            HTTPHeaders.appendBytes(of: value, to: &out)
            out.append(0x0D); out.append(0x0A)
        }
        out.append(0x0D); out.append(0x0A)
    }
}
