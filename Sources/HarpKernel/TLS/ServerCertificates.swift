import Logging
import Synchronization

/// The server contexts of a plugin's TLS listeners, built at startup (a bad file is a config
/// error naming the listener) and rebuilt from the same files on reload (SIGHUP). New
/// connections get the new context; open ones keep theirs; a reloaded context takes over the
/// old one's session-ticket keys, so tickets issued before the reload still resume.
public final class ServerCertificates: Sendable {
    public let listeners: [TLSListenerConfiguration]
    private let keyPrefix: String
    private let alpn: [String]
    private let contexts: Mutex<[TLSContext]>

    /// `keyPrefix` names the listeners in errors (`http.listen_tls` → `http.listen_tls[0]`).
    public init(_ listeners: [TLSListenerConfiguration], keyPrefix: String, alpn: [String]) throws(ConfigError) {
        self.listeners = listeners
        self.keyPrefix = keyPrefix
        self.alpn = alpn
        var built: [TLSContext] = []
        for (index, listener) in listeners.enumerated() {
            do {
                built.append(try listener.makeContext(alpn: alpn))
            } catch {
                throw ConfigError.invalid(key: "\(keyPrefix)[\(index)]", value: "\"\(listener.cert)\"", reason: "\(error)")
            }
        }
        contexts = Mutex(built)
    }

    /// The context new connections on listener `index` get.
    public func context(_ index: Int) -> TLSContext { contexts.withLock { $0[index] } }

    /// Re-reads every listener's files. A file that fails keeps the old context and is logged.
    public func reload(logger: Logger) {
        for (index, listener) in listeners.enumerated() {
            do {
                let context = try listener.makeContext(alpn: alpn)
                contexts.withLock { current in
                    context.adoptTicketKeys(from: current[index])
                    current[index] = context
                }
                logger.info("reloaded TLS certificate", metadata: ["listen": "\(listener.listen)", "cert": "\(listener.cert)"])
            } catch {
                logger.error("TLS certificate reload failed; keeping the old one",
                             metadata: ["key": "\(keyPrefix)[\(index)]", "cert": "\(listener.cert)", "error": "\(error)"])
            }
        }
    }
}
