import CShims
import Glibc

/// A directory that file operations cannot leave: every path is resolved beneath the
/// directory's descriptor with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) — no `..` out,
/// no absolute path, and no symbolic link followed on the way (a user's `photos -> /elsewhere`
/// inside the folder is never written through). P2P storage makes every change a peer causes
/// through one of these, so that a name a peer chose can only ever land inside the folder.
///
/// Each operation opens the parent of its path beneath the root (one openat2) and then acts
/// on the last component relative to it (mkdirat, renameat2, unlinkat, linkat, fstatat with
/// AT_SYMLINK_NOFOLLOW). Errors come back as errno values.
public final class ConfinedDirectory: Sendable {
    public let path: String
    /// O_PATH descriptor of the root, open as long as this object lives.
    private let root: Int32

    public struct Failure: Error, CustomStringConvertible {
        public let path: String
        public let errno: Int32
        public var description: String { "\(path): \(String(cString: strerror(errno)))" }
    }

    public init(path: String) throws(Failure) {
        let fd = Glibc.open(path, HARP_O_PATH | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(path: path, errno: errno) }
        self.path = path
        root = fd
    }

    deinit { Glibc.close(root) }

    /// Opens `relative` (no leading `/`, components separated by `/`) beneath the root.
    /// Returns a descriptor or `-errno` (ELOOP/EXDEV for a symbolic link or an escape).
    public func open(_ relative: String, flags: Int32, mode: mode_t = 0o644) -> Int32 {
        let fd = harp_openat_beneath(root, relative.isEmpty ? "." : relative, flags | O_CLOEXEC, UInt32(mode))
        return fd >= 0 ? fd : -errno
    }

    /// Runs `body` with the parent directory of `relative` (opened beneath the root) and its
    /// last component; `-errno` when the parent cannot be opened.
    private func inParent(_ relative: String, _ body: (Int32, String) -> Int32) -> Int32 {
        let slash = relative.lastIndex(of: "/")
        let parent = slash.map { String(relative[..<$0]) } ?? ""
        let name = slash.map { String(relative[relative.index(after: $0)...]) } ?? relative
        guard !name.isEmpty, name != ".", name != ".." else { return EINVAL }
        let fd = open(parent, flags: HARP_O_PATH | O_DIRECTORY)
        guard fd >= 0 else { return -fd }
        defer { Glibc.close(fd) }
        return body(fd, name)
    }

    /// 0 or errno.
    public func mkdir(_ relative: String, mode: mode_t = 0o755) -> Int32 {
        inParent(relative) { parent, name in mkdirat(parent, name, mode) == 0 ? 0 : errno }
    }

    public func rmdir(_ relative: String) -> Int32 {
        inParent(relative) { parent, name in unlinkat(parent, name, AT_REMOVEDIR) == 0 ? 0 : errno }
    }

    public func unlink(_ relative: String) -> Int32 {
        inParent(relative) { parent, name in unlinkat(parent, name, 0) == 0 ? 0 : errno }
    }

    /// Renames `from` (beneath `source`'s root) to `to` (beneath this one's); with
    /// `replace: false`, fails with EEXIST rather than replace what is at `to`.
    public func rename(_ from: String, in source: ConfinedDirectory, to: String, replace: Bool = true) -> Int32 {
        source.inParent(from) { fromParent, fromName in
            inParent(to) { toParent, toName in
                let result = replace ? renameat(fromParent, fromName, toParent, toName)
                    : harp_renameat_noreplace(fromParent, fromName, toParent, toName)
                return result == 0 ? 0 : errno
            }
        }
    }

    /// A second name `to` (beneath `target`) for the file `from`.
    public func link(_ from: String, to: String, in target: ConfinedDirectory) -> Int32 {
        inParent(from) { fromParent, fromName in
            target.inParent(to) { toParent, toName in linkat(fromParent, fromName, toParent, toName, 0) == 0 ? 0 : errno }
        }
    }

    /// What is at `relative` itself (a symbolic link is described, not followed); nil when
    /// nothing is there or the way to it is not beneath the root.
    public func lstat(_ relative: String) -> stat? {
        var info = stat()
        let result = inParent(relative) { parent, name in fstatat(parent, name, &info, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : errno }
        return result == 0 ? info : nil
    }

    /// The entries of the directory at `relative` (`.` and `..` left out), each with what it
    /// is itself (links described, not followed); nil when it cannot be opened (or is a link).
    public func entries(_ relative: String) -> [(name: String, info: stat)]? {
        let fd = open(relative, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        guard let directory = fdopendir(fd) else {
            Glibc.close(fd)
            return nil
        }
        defer { closedir(directory) }
        var found: [(name: String, info: stat)] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            var info = stat()
            guard name != ".", name != "..", fstatat(dirfd(directory), name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
            found.append((name, info))
        }
        return found
    }

    /// Sets the modification time of the file at `relative` (ns since the epoch; the access
    /// time is left alone), never through a link.
    public func setModificationTime(_ relative: String, nanoseconds: Int64) -> Int32 {
        let fd = open(relative, flags: O_WRONLY | O_NOFOLLOW)
        guard fd >= 0 else { return -fd }
        defer { Glibc.close(fd) }
        var times = [timespec(tv_sec: 0, tv_nsec: HARP_UTIME_OMIT),
                     timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))]
        return futimens(fd, &times) == 0 ? 0 : errno
    }

    /// Sets the permission bits of the regular file at `relative` (never through a link).
    public func chmod(_ relative: String, mode: mode_t) -> Int32 {
        let fd = open(relative, flags: O_RDONLY | O_NOFOLLOW)
        guard fd >= 0 else { return -fd }
        defer { Glibc.close(fd) }
        return fchmod(fd, mode) == 0 ? 0 : errno
    }
}
