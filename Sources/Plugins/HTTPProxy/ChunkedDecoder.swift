/// Incremental parser of the chunked transfer coding (RFC 9112 §7.1), strict about sizes and
/// extensions. It reports data ranges; the proxy writes its own framing around them, so chunk
/// extensions never reach the upstream and every chunk size it sees is one harp wrote.
struct ChunkedDecoder {
    enum Event: Equatable {
        /// Body bytes at this range of the input.
        case data(Range<Int>)
        /// The last chunk and the trailer section have been read; the body ends here.
        case end(trailers: [(String, String)])

        static func == (lhs: Event, rhs: Event) -> Bool {
            switch (lhs, rhs) {
            case (.data(let a), .data(let b)): a == b
            case (.end(let a), .end(let b)): a.map(\.0) == b.map(\.0) && a.map(\.1) == b.map(\.1)
            default: false
            }
        }
    }

    private enum State {
        case size
        case data(remaining: Int)
        case dataCRLF
        case trailers
        case done
    }

    private var state: State = .size
    private var trailers: [(String, String)] = []
    static let maxLineBytes = 4096

    var isDone: Bool { if case .done = state { true } else { false } }

    /// Consumes what it can of `bytes`, calling `emit` for each event. Returns how many bytes
    /// were consumed; the rest (an incomplete line) must be offered again with more data.
    mutating func feed(_ bytes: UnsafeRawBufferPointer, emit: (Event) throws -> Void) throws(HTTPError) -> Int {
        var position = 0
        do {
            while position < bytes.count {
                switch state {
                case .size:
                    guard let lineEnd = try line(bytes, from: position) else { return position }
                    let size = try Self.chunkSize(bytes, position..<lineEnd)
                    position = lineEnd + 2
                    state = size == 0 ? .trailers : .data(remaining: size)
                case .data(let remaining):
                    let take = min(remaining, bytes.count - position)
                    try emit(.data(position..<position + take))
                    position += take
                    state = remaining == take ? .dataCRLF : .data(remaining: remaining - take)
                case .dataCRLF:
                    guard bytes.count - position >= 2 else { return position }
                    guard bytes[position] == 0x0D && bytes[position + 1] == 0x0A else {
                        throw HTTPError.bad("chunk data not followed by CRLF")
                    }
                    position += 2
                    state = .size
                case .trailers:
                    guard let lineEnd = try line(bytes, from: position) else { return position }
                    if lineEnd == position {
                        position += 2
                        state = .done
                        try emit(.end(trailers: trailers))
                        return position
                    }
                    trailers.append(try Self.trailer(bytes, position..<lineEnd))
                    position = lineEnd + 2
                case .done:
                    return position
                }
            }
        } catch let error as HTTPError {
            throw error
        } catch {
            throw HTTPError(502, "\(error)")
        }
        return position
    }

    /// The index of the CR of the next CRLF at or after `from`, or nil when not yet there.
    private func line(_ bytes: UnsafeRawBufferPointer, from: Int) throws(HTTPError) -> Int? {
        var i = from
        while i < bytes.count {
            if bytes[i] == 0x0D {
                guard i + 1 < bytes.count else { return nil }
                guard bytes[i + 1] == 0x0A else { throw .bad("bare CR in chunked framing") }
                return i
            }
            if bytes[i] == 0x0A { throw .bad("bare LF in chunked framing") }
            i += 1
        }
        if bytes.count - from > Self.maxLineBytes { throw .bad("chunk line too long") }
        return nil
    }

    /// chunk-size [ chunk-ext ]: 1–15 hex digits, then `;name[=value]` extensions that are
    /// checked and dropped.
    static func chunkSize(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) throws(HTTPError) -> Int {
        var size = 0, digits = 0, i = range.lowerBound
        while i < range.upperBound, let digit = hexValue(bytes[i]) {
            size = size << 4 | digit
            digits += 1
            i += 1
        }
        guard digits > 0 else { throw .bad("missing chunk size") }
        guard digits <= 15 else { throw .bad("chunk size too large") }
        while i < range.upperBound && (bytes[i] == 0x20 || bytes[i] == 0x09) { i += 1 }
        if i < range.upperBound {
            guard bytes[i] == 0x3B else { throw .bad("invalid byte after the chunk size") }
            try checkExtensions(bytes, i..<range.upperBound)
        }
        return size
    }

    /// `*( BWS ";" BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ] )`.
    private static func checkExtensions(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) throws(HTTPError) {
        var i = range.lowerBound
        func skipSpace() { while i < range.upperBound && (bytes[i] == 0x20 || bytes[i] == 0x09) { i += 1 } }
        while i < range.upperBound {
            skipSpace()
            guard i < range.upperBound, bytes[i] == 0x3B else { throw .bad("invalid chunk extension") }
            i += 1
            skipSpace()
            let nameStart = i
            while i < range.upperBound && HTTPHeadParser.isTchar(bytes[i]) { i += 1 }
            guard i > nameStart else { throw .bad("invalid chunk extension name") }
            skipSpace()
            guard i < range.upperBound, bytes[i] == 0x3D else { continue }
            i += 1
            skipSpace()
            if i < range.upperBound && bytes[i] == 0x22 {
                i += 1
                while i < range.upperBound && bytes[i] != 0x22 {
                    if bytes[i] == 0x5C { i += 1 }
                    guard i < range.upperBound, HTTPHeadParser.isFieldValueByte(bytes[i]) else { throw .bad("invalid chunk extension value") }
                    i += 1
                }
                guard i < range.upperBound else { throw .bad("unterminated chunk extension value") }
                i += 1
            } else {
                let valueStart = i
                while i < range.upperBound && HTTPHeadParser.isTchar(bytes[i]) { i += 1 }
                guard i > valueStart else { throw .bad("invalid chunk extension value") }
            }
        }
    }

    private static func trailer(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) throws(HTTPError) -> (String, String) {
        guard let colon = range.first(where: { bytes[$0] == 0x3A }), colon > range.lowerBound,
              (range.lowerBound..<colon).allSatisfy({ HTTPHeadParser.isTchar(bytes[$0]) }) else {
            throw .bad("invalid trailer field")
        }
        var start = colon + 1, end = range.upperBound
        while start < end && (bytes[start] == 0x20 || bytes[start] == 0x09) { start += 1 }
        while end > start && (bytes[end - 1] == 0x20 || bytes[end - 1] == 0x09) { end -= 1 }
        guard (start..<end).allSatisfy({ HTTPHeadParser.isFieldValueByte(bytes[$0]) }) else { throw .bad("invalid trailer value") }
        return (HTTPHeadParser.ascii(bytes, range.lowerBound..<colon), HTTPHeadParser.text(bytes, start..<end))
    }

    @inline(__always)
    private static func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case 0x30...0x39: Int(byte - 0x30)
        case 0x41...0x46: Int(byte - 0x41 + 10)
        case 0x61...0x66: Int(byte - 0x61 + 10)
        default: nil
        }
    }
}
