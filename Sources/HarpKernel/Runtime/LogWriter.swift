import Dispatch
import Glibc
import Logging
import Synchronization

/// Log lines leave through one writer thread: a loop that logs (the access log, once per
/// request) formats its line and queues it, and never waits on standard error — a pipe that
/// nobody drains (a stuck log collector, Docker's blocking log mode) would otherwise freeze
/// every loop inside write(2). Lines beyond `capacity` waiting are dropped and counted; the
/// count is logged once the writer catches up.
///
/// Lines look like swift-log's `StreamLogHandler`'s (`2026-12-07T03:51:10+0000 info harp:
/// [HarpKernel] …`), with the time from `localtime_r` (`localtime`, which StreamLogHandler
/// calls, shares one buffer between threads and re-reads the time zone file on every call).
public final class LogWriter: Sendable {
    public static let standardError = LogWriter(fd: 2)

    private let fd: Int32
    private let capacity = 10_000
    private let state = Mutex<(lines: [String], dropped: Int, writing: Bool)>(([], 0, false))
    private let pending = DispatchSemaphore(value: 0)
    /// Said after the time on every line when set (a P2P node's short ID), so that the lines
    /// of several nodes sharing a terminal or a journal can be told apart.
    private let tag = Mutex<String>("")

    /// Sets the tag every later line carries (`[MFRG-GZDF]`).
    public func setTag(_ text: String) { tag.withLock { $0 = text.isEmpty ? "" : " [\(text)]" } }

    private init(fd: Int32) {
        self.fd = fd
        DetachedThread.start(name: "harp-log") { [self] in run() }
    }

    /// Queues one line (with its newline); never blocks on the output.
    func write(_ line: String) {
        let queued = state.withLock { state -> Bool in
            guard state.lines.count < capacity else {
                state.dropped += 1
                return false
            }
            state.lines.append(line)
            return state.lines.count == 1 && !state.writing
        }
        if queued { pending.signal() }
    }

    /// Waits until the queued lines are written, at most `timeout` (before the process exits).
    public func flush(timeout: Duration = .seconds(1)) {
        let deadline = EventLoop.monotonicNanos() + timeout.nanoseconds
        while state.withLock({ !$0.lines.isEmpty || $0.writing }) && EventLoop.monotonicNanos() < deadline {
            usleep(1000)
        }
    }

    private func run() {
        while true {
            pending.wait()
            while true {
                let (lines, dropped) = state.withLock { state -> ([String], Int) in
                    defer { state.lines.removeAll(keepingCapacity: true); state.dropped = 0 }
                    state.writing = !state.lines.isEmpty || state.dropped > 0
                    return (state.lines, state.dropped)
                }
                guard !lines.isEmpty || dropped > 0 else { break }
                var text = lines.joined()
                if dropped > 0 { text += "harp: \(dropped) log line(s) dropped: standard error did not keep up\n" }
                writeAll(Array(text.utf8))
                state.withLock { $0.writing = false }
            }
        }
    }

    private func writeAll(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return }
            offset += written
        }
    }

    /// The swift-log handler that formats on the caller's thread and queues the line.
    public struct Handler: LogHandler {
        public var logLevel: Logger.Level
        public var metadata: Logger.Metadata = [:]
        private let label: String
        private let writer: LogWriter

        public init(label: String, level: Logger.Level, writer: LogWriter = .standardError) {
            self.label = label
            self.logLevel = level
            self.writer = writer
        }

        public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        public func log(event: LogEvent) {
            var merged = metadata
            if let explicit = event.metadata { merged.merge(explicit) { $1 } }
            if let error = event.error { merged["error.message"] = "\(error)" }
            let pretty = merged.isEmpty ? "" : " " + merged.sorted { $0.key < $1.key }.map { "\($0)=\($1)" }.joined(separator: " ")
            writer.write("\(Self.timestamp())\(writer.tag.withLock { $0 }) \(event.level) \(label):\(pretty) [\(event.source)] \(event.message)\n")
        }

        static func timestamp() -> String {
            var now = time(nil)
            var parts = tm()
            localtime_r(&now, &parts)
            var buffer = [CChar](repeating: 0, count: 64)
            let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S%z", &parts)
            return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }
}
