import Synchronization

/// Node commands another plugin can also answer from a stopped node's state directory, read
/// only (`harp storage ls/history/log` read the metadata log when no node runs): registered by
/// the plugin's `prepareCommands` before any command runs.
public enum StoppedNodeCommands {
    /// The state directory and the request's fields → the answer, as the running node's.
    public typealias Handler = @Sendable (_ directory: String, _ request: [String: String]) -> String

    private static let handlers = Mutex<[String: Handler]>([:])

    public static func register(_ name: String, _ handler: @escaping Handler) {
        handlers.withLock { $0[name] = handler }
    }

    static func handler(_ name: String) -> Handler? { handlers.withLock { $0[name] } }
}
