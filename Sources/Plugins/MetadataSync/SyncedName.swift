/// The rule for a name in the replicated tree: one path component that the folder's scan could
/// have produced. Every name a peer sends (an operation's, a settled placement's) is checked
/// against it before anything is applied, and materialization only ever creates names that
/// passed — so no name a peer chooses can climb out of the folder (`..`, `a/b`), cut a path
/// short (NUL), reach harp's own files or hidden files (a leading `.`: the scan never syncs
/// them, and `.harp*` is harp's), or fail to be created (over NAME_MAX).
enum SyncedName {
    /// NAME_MAX on Linux file systems.
    static let maximumBytes = 255

    enum Problem: String, Sendable, Equatable {
        case empty
        case notUTF8 = "not_utf8"
        case hidden = "hidden_or_dot"
        case separator
        case nul
        case tooLong = "too_long"
    }

    /// The name, or why it cannot be one.
    static func check(_ bytes: [UInt8]) -> Result<String, NameRefusal> {
        func refuse(_ problem: Problem) -> Result<String, NameRefusal> { .failure(NameRefusal(problem: problem, bytes: bytes)) }
        guard !bytes.isEmpty else { return refuse(.empty) }
        guard bytes.count <= maximumBytes else { return refuse(.tooLong) }
        guard !bytes.contains(0) else { return refuse(.nul) }
        guard !bytes.contains(UInt8(ascii: "/")) else { return refuse(.separator) }
        guard bytes[0] != UInt8(ascii: ".") else { return refuse(.hidden) }
        guard let text = String(validating: bytes, as: UTF8.self) else { return refuse(.notUTF8) }
        return .success(text)
    }

    static func isValid(_ name: String) -> Bool {
        if case .success = check(Array(name.utf8)) { return true }
        return false
    }
}

/// A name that broke `SyncedName`'s rule, with its bytes shown safely (escaped, cut short) for
/// the one log line the refusal gets.
struct NameRefusal: Error, Equatable, CustomStringConvertible {
    let problem: SyncedName.Problem
    let bytes: [UInt8]

    var description: String {
        let shown = bytes.prefix(64).map { byte -> String in
            (0x20..<0x7F).contains(byte) && byte != UInt8(ascii: "\\") ? String(UnicodeScalar(byte)) : "\\x" + String(byte, radix: 16)
        }.joined()
        return "the name \"\(shown)\(bytes.count > 64 ? "…" : "")\" (\(bytes.count) bytes) is not allowed: \(problem.rawValue)"
    }
}
