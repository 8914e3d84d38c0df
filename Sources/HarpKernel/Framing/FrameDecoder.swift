/// What a decoder says about the bytes at the front of a read buffer.
public enum FrameDecision<Frame, Failure> {
    /// Not enough bytes to decide yet.
    case needMore
    /// A frame: its decoded header (`Frame`), the bytes the header took, and how many payload
    /// bytes follow it (0 when the protocol frames its body some other way, as HTTP does).
    case frame(Frame, headerLength: Int, payloadLength: Int)
    /// The bytes break the protocol; the connection cannot go on.
    case invalid(Failure)
}

/// Decides where the next frame in a byte stream ends: an HTTP head, a WebSocket frame
/// header, an frp message, a yamux header, a P2P wire frame. Decoders may keep state between
/// calls for the same frame (how far a previous call scanned), so they are values passed
/// `inout`; a decoder never consumes bytes itself — the reader's owner does, after using them.
public protocol FrameDecoder {
    associatedtype Frame
    associatedtype Failure
    mutating func decode(_ bytes: UnsafeRawBufferPointer) -> FrameDecision<Frame, Failure>
}
