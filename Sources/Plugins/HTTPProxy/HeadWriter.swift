/// Serializes heads for the wire. Start lines are written byte for byte (see
/// `HTTPHeaders.appendBytes`); the fields write themselves from their buffer.
enum HeadWriter {
    static func request(_ head: HTTPRequestHead, into out: inout [UInt8]) {
        HTTPHeaders.appendBytes(of: head.method, to: &out)
        out.append(0x20)
        HTTPHeaders.appendBytes(of: head.target, to: &out)
        HTTPHeaders.appendBytes(of: head.minorVersion == 0 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n", to: &out)
        head.headers.write(into: &out)
    }

    static func response(_ head: HTTPResponseHead, into out: inout [UInt8]) {
        HTTPHeaders.appendBytes(of: "HTTP/1.1 \(head.status) ", to: &out)
        HTTPHeaders.appendBytes(of: head.reason, to: &out)
        HTTPHeaders.appendBytes(of: "\r\n", to: &out)
        head.headers.write(into: &out)
    }
}
