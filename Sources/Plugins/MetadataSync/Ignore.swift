import Foundation
import Glibc

/// `.harpignore` at the folder's top: one pattern per line (`#` comments), gitignore-style
/// as far as fnmatch goes — a pattern without `/` matches a name at any depth, one with `/`
/// the path from the top.
struct Ignore {
    let patterns: [String]

    init(folder: String) {
        let text = (try? String(contentsOfFile: folder + "/.harpignore", encoding: .utf8)) ?? ""
        patterns = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && !$0.hasPrefix("#") }
    }

    /// Whether `relative` or a directory above it is ignored.
    func covers(_ relative: String) -> Bool {
        guard !patterns.isEmpty else { return false }
        var end = relative.startIndex
        while let slash = relative[end...].firstIndex(of: "/") {
            if matches(String(relative[..<slash])) { return true }
            end = relative.index(after: slash)
        }
        return matches(relative)
    }

    func matches(_ relative: String) -> Bool {
        let name = relative.split(separator: "/").last.map(String.init) ?? relative
        for raw in patterns {
            let pattern = raw.hasSuffix("/") ? String(raw.dropLast()) : raw
            if pattern.contains("/") {
                let anchored = pattern.hasPrefix("/") ? String(pattern.dropFirst()) : pattern
                if fnmatch(anchored, relative, FNM_PATHNAME) == 0 { return true }
            } else if fnmatch(pattern, name, 0) == 0 {
                return true
            }
        }
        return false
    }
}
