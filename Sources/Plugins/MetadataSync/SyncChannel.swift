import BlockExchange
import HarpKernel
import Synchronization

/// The metadata sync inside the p2p sessions (delta anti-entropy): on connect, and again every
/// `rescan_interval`, each side sends its report — its vector (per origin node, the highest
/// operation sequence it holds durably without gaps) with the other replicas' vectors it
/// knows (ReplicaReports) — and the other answers with what is missing; every new operation
/// is pushed to every peer at once. The frames are `SyncMessage`s.
///
/// Each peer's frames reach the node in the order they came, one at a time: one inbox per
/// peer, drained by one task (as syncthing's per-connection dispatcher), so a batch is never
/// overtaken by the next one and no peer queues unbounded work — past `inboxLimit` bytes
/// waiting, the peer is penalized and its frames dropped until the inbox drains.
struct SyncChannel: PeerChannel {
    /// Bytes of frames one peer may have waiting (four full frames of 4 MiB and more).
    static let inboxLimit = 24 << 20

    let node: MetadataNode
    private let inboxes = Inboxes()

    init(node: MetadataNode) { self.node = node }

    var channelTypes: [UInt8: Int] { SyncMessage.bodyLimits }

    func peerConnected(_ link: PeerLink) {
        inboxes.inbox(for: link.peer, node: node).post(.connected(link))
    }

    func received(type: UInt8, body: [UInt8], from link: PeerLink) {
        inboxes.inbox(for: link.peer, node: node).post(.frame(type, body, link))
    }

    func peerDisconnected(_ link: PeerLink) {
        inboxes.inbox(for: link.peer, node: node).post(.disconnected(link))
    }

    /// What a peer's inbox carries, in the order the sessions saw it.
    enum Event: Sendable {
        case connected(PeerLink)
        case frame(UInt8, [UInt8], PeerLink)
        case disconnected(PeerLink)

        var size: Int {
            if case .frame(_, let body, _) = self { return body.count }
            return 0
        }
    }

    final class Inboxes: Sendable {
        private let all = Mutex<[NodeID: Inbox]>([:])

        func inbox(for peer: NodeID, node: MetadataNode) -> Inbox {
            all.withLock { all in
                if let inbox = all[peer] { return inbox }
                let inbox = Inbox(node: node)
                all[peer] = inbox
                return inbox
            }
        }
    }

    /// One peer's events, drained in order by at most one task at a time.
    final class Inbox: Sendable {
        private let node: MetadataNode
        private let state = Mutex<(events: [Event], bytes: Int, draining: Bool, overflowing: Bool)>(([], 0, false, false))

        init(node: MetadataNode) { self.node = node }

        func post(_ event: Event) {
            let (start, overflow) = state.withLock { state -> (Bool, PeerLink?) in
                if state.bytes + event.size > SyncChannel.inboxLimit, case .frame(_, _, let link) = event {
                    defer { state.overflowing = true }
                    return (false, state.overflowing ? nil : link)
                }
                state.events.append(event)
                state.bytes += event.size
                guard !state.draining else { return (false, nil) }
                state.draining = true
                return (true, nil)
            }
            if let overflow {
                overflow.penalize(reason: "more than \(SyncChannel.inboxLimit >> 20) MiB of metadata frames waiting")
            }
            // On the cooperative pool: the node is an actor that scans and hashes, and a task
            // started from a session would take its loop as executor preference.
            if start { Task(executorPreference: globalConcurrentExecutor) { await self.drain() } }
        }

        private func drain() async {
            while let event = state.withLock({ state -> Event? in
                guard !state.events.isEmpty else {
                    state.draining = false
                    state.overflowing = false
                    return nil
                }
                let event = state.events.removeFirst()
                state.bytes -= event.size
                return event
            }) {
                switch event {
                case .connected(let link): await node.connected(link)
                case .frame(let type, let body, let link): await node.received(type: type, body: body, from: link)
                case .disconnected(let link): await node.disconnected(link)
                }
            }
        }
    }
}
