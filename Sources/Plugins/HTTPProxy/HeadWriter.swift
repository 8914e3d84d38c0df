/// Serializes heads for the wire. Strings are written byte for byte: ASCII as is, and the
/// Latin-1 scalars the parser made from obs-text back to their original bytes.
enum HeadWriter {
    static func request(_ head: HTTPRequestHead, into out: inout [UInt8]) {
        append(head.method, to: &out)
        out.append(0x20)
        append(head.target, to: &out)
        append(head.minorVersion == 0 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n", to: &out)
        fields(head.headers, into: &out)
    }

    static func response(_ head: HTTPResponseHead, into out: inout [UInt8]) {
        append("HTTP/1.1 \(head.status) ", to: &out)
        append(head.reason, to: &out)
        append("\r\n", to: &out)
        fields(head.headers, into: &out)
    }

    private static func fields(_ headers: HTTPHeaders, into out: inout [UInt8]) {
        for (name, value) in headers {
            append(name, to: &out)
            out.append(0x3A)
            out.append(0x20)
            append(value, to: &out)
            out.append(0x0D)
            out.append(0x0A)
        }
        out.append(0x0D)
        out.append(0x0A)
    }

    @inline(__always)
    static func append(_ text: String, to out: inout [UInt8]) {
        if text.utf8.allSatisfy({ $0 < 0x80 }) {
            out.append(contentsOf: text.utf8)
        } else {
            for scalar in text.unicodeScalars { out.append(UInt8(truncatingIfNeeded: scalar.value)) }
        }
    }
}
