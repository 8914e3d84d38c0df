import Glibc

/// A route's regular expression, compiled once when the record arrives, matched at the start
/// of the target path (Python's `re.match`, as HaRP does).
///
/// Most routes are a literal prefix (`^/api/`, `ws`) or match everything (`.*`): those are a
/// byte comparison. The rest run on glibc's POSIX engine (ERE, no sub-matches), which keeps
/// state sets instead of backtracking: Swift's `Regex` backtracks, and a route like
/// `^/(\w+/?)+$` let one 20-byte request hold the event loop for 38 s (found by a hostile
/// probe). Whether a match exists at the start of the path does not depend on Python's
/// leftmost-first or POSIX's leftmost-longest rule, so the answer is Python's.
final class RoutePattern: @unchecked Sendable {
    // @unchecked Sendable: `compiled` is written by regcomp in init and only read after;
    // glibc's regexec may be called from several threads on one compiled pattern.
    private let compiled: UnsafeMutablePointer<regex_t>?
    /// The bytes a match must start with, when the pattern is only that.
    private let literal: [UInt8]?
    private let matchesAll: Bool

    init?(_ text: String) {
        matchesAll = text == ".*" || text.isEmpty || text == "^.*"
        literal = Self.literalPrefix(text)
        if matchesAll || literal != nil {
            compiled = nil
            return
        }
        guard let (extended, ignoreCase) = Self.extended(fromPython: text) else { return nil }
        let regex = UnsafeMutablePointer<regex_t>.allocate(capacity: 1)
        guard regcomp(regex, "^(" + extended + ")", REG_EXTENDED | REG_NOSUB | (ignoreCase ? REG_ICASE : 0)) == 0 else {
            regex.deallocate()
            return nil
        }
        compiled = regex
    }

    deinit {
        if let compiled {
            regfree(compiled)
            compiled.deallocate()
        }
    }

    func matchesPrefix(of path: String) -> Bool {
        if matchesAll { return true }
        if let literal { return path.utf8.starts(with: literal) }
        guard let compiled else { return false }
        return regexec(compiled, path, 0, nil, 0) == 0
    }

    /// `^/api/v1` → "/api/v1"; nil when the pattern has any other regex syntax.
    static func literalPrefix(_ text: String) -> [UInt8]? {
        var bytes = Array(text.utf8)
        if bytes.first == UInt8(ascii: "^") { bytes.removeFirst() }
        var out: [UInt8] = []
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\\") {
                guard index + 1 < bytes.count, Array("/.-".utf8).contains(bytes[index + 1]) else { return nil }
                out.append(bytes[index + 1])
                index += 2
                continue
            }
            guard byte >= 0x20, byte < 0x7f, !Array("^$.|?*+()[]{}".utf8).contains(byte) else { return nil }
            out.append(byte)
            index += 1
        }
        return out
    }

    /// Python's `re` syntax as POSIX ERE (with glibc's `\w \W \s \S \b \B`), or nil for what
    /// ERE cannot say (lookaround, back-references, unknown escapes): such a route matches
    /// nothing, which fails closed (404).
    static func extended(fromPython text: String) -> (String, ignoreCase: Bool)? {
        var characters = Array(text)
        var ignoreCase = false
        if characters.starts(with: Array("(?i)")) {
            ignoreCase = true
            characters.removeFirst(4)
        }
        let special = Set(".[]()*+?{}|^$\\")
        var out = ""
        var index = 0
        func next(_ offset: Int = 1) -> Character? { index + offset < characters.count ? characters[index + offset] : nil }
        while index < characters.count {
            let character = characters[index]
            switch character {
            case "\\":
                guard let escaped = next() else { return nil }
                switch escaped {
                case "d": out += "[0-9]"
                case "D": out += "[^0-9]"
                case "w", "W", "s", "S", "b", "B": out += "\\\(escaped)"
                case "A": out += "^"
                case "Z": out += "$"
                default:
                    guard escaped.isASCII, escaped.isPunctuation || escaped.isSymbol || escaped == " " else { return nil }
                    out += special.contains(escaped) ? "\\\(escaped)" : String(escaped)
                }
                index += 2
                continue
            case "(":
                if next() == "?" {
                    if next(2) == ":" {
                        index += 3
                    } else if next(2) == "P", next(3) == "<", let close = characters[index...].firstIndex(of: ">") {
                        index = close + 1
                    } else {
                        return nil  // lookaround, flags in the middle, comments
                    }
                    out += "("
                    continue
                }
                out += "("
            case "[":
                // A bracket expression: copied with Python's escapes turned into POSIX terms
                // (inside brackets a backslash is literal in POSIX).
                out += "["
                index += 1
                if next(0) == "^" { out += "^"; index += 1 }
                if next(0) == "]" { out += "]"; index += 1 }
                while let member = next(0), member != "]" {
                    if member == "\\" {
                        guard let escaped = next() else { return nil }
                        switch escaped {
                        case "d": out += "0-9"
                        case "w": out += "A-Za-z0-9_"
                        case "s": out += "[:space:]"
                        case "]", "^", "\\", "[": return nil  // would need reordering in POSIX
                        default:
                            guard escaped.isASCII, escaped.isPunctuation || escaped.isSymbol else { return nil }
                            out.append(escaped)
                        }
                        index += 2
                    } else {
                        out.append(member)
                        index += 1
                    }
                }
                guard next(0) == "]" else { return nil }
                out += "]"
            case "*", "+", "?", "}":
                out.append(character)
                // Lazy quantifiers do not change whether a match exists; possessive ones are not ERE.
                if next() == "?" { index += 1 } else if next() == "+" && character != "}" { return nil }
            default:
                out.append(character)
            }
            index += 1
        }
        return (out, ignoreCase)
    }
}
