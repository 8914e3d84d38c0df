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
        for field in headers {
            append(field.name, to: &out)
            out.append(0x3A)
            out.append(0x20)
            append(field.value, to: &out)
            out.append(0x0D)
            out.append(0x0A)
        }
        out.append(0x0D)
        out.append(0x0A)
    }

    @inline(__always)
    static func append(_ text: String, to out: inout [UInt8]) {
        let start = out.count
        out.append(contentsOf: text.utf8)
        // Rare: obs-text was mapped to Latin-1 scalars by the parser; write those back as
        // single bytes instead of their UTF-8 encoding.
        if out[start...].contains(where: { $0 >= 0x80 }) {
            out.removeSubrange(start...)
            for scalar in text.unicodeScalars { out.append(UInt8(truncatingIfNeeded: scalar.value)) }
        }
    }
}
