import Logging
/// What another plugin (the metadata sync) adds to the node's peer sessions: frame types of
/// its own, carried in the same authenticated connections, and commands on the node's socket.
/// The block exchange owns types 1–63; a channel claims types from 64 up (`channelTypes`),
/// each with its body limit, and sees every peer come and go.
///
/// Callbacks come on the peer session's loop and must return quickly (hand work to a thread
/// of the channel's own); `PeerLink.send` may be called from any thread.
public protocol PeerChannel: Sendable {
    /// Frame type → the largest body it may carry. Types 64–127.
    var channelTypes: [UInt8: Int] { get }
    /// A session with `peer` is up (after the Hello); `link` sends to it while it lasts.
    func peerConnected(_ link: PeerLink)
    /// A frame of one of `channelTypes` from the peer behind `link`.
    func received(type: UInt8, body: [UInt8], from link: PeerLink)
    /// The session behind `link` has ended. Connects and disconnects of one peer can overlap
    /// (a second connection displaces the first) and a channel that hands them to a thread of
    /// its own may see them out of order: it forgets a peer only when `link` is the one it holds.
    func peerDisconnected(_ link: PeerLink)
}

/// Sends a channel's frames to one peer session.
public struct PeerLink: Sendable {
    public let peer: NodeID
    let session: PeerSession

    /// Queues one frame (from any thread); dropped if the session has ended.
    public func send(type: UInt8, body: [UInt8]) {
        session.send(PeerFrameHeader.header(raw: type, length: body.count) + body)
    }

    /// Whether both name the same session (not just the same peer).
    public func isSame(as other: PeerLink) -> Bool { session === other.session }

    /// The peer broke the channel's rules: its session ends now and new ones are refused for
    /// a while (`PeerPenalties`), logged once with `reason`.
    public func penalize(reason: String) {
        let length = session.swarm.penalties.penalize(peer)
        session.swarm.logger.warning("peer \(peer) penalized for \(length): \(reason); its session is closed")
        session.end()
    }
}

/// A command another plugin answers on the node's socket (`{"cmd": name, …}`): it gets the
/// request's string and number fields as strings and returns the one answer, a JSON object
/// as text (with `"error"` when it failed).
public typealias NodeCommand = @Sendable ([String: String]) async -> String
