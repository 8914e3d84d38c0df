import Glibc

/// io_uring could not be set up. `harp serve` prints `description` and exits non-zero: one
/// line naming the cause and the fix, never a hang.
public struct RingUnavailable: Error, CustomStringConvertible {
    public let errno: Int32

    public init(errno: Int32) { self.errno = errno }

    public var description: String {
        let reason = String(cString: strerror(errno))
        let cause: String
        let fix: String
        switch errno {
        case EPERM, EACCES:
            if let disabled = Self.sysctlDisabled(), disabled != 0 {
                cause = "the sysctl kernel.io_uring_disabled is \(disabled)"
                fix = "run `sysctl -w kernel.io_uring_disabled=0` (or 1 and add harp's user to the group in kernel.io_uring_group)"
            } else {
                cause = "the process is not allowed to call io_uring_setup (a seccomp filter, e.g. a container's default profile)"
                fix = "allow io_uring_setup, io_uring_enter and io_uring_register in the seccomp profile (docker: --security-opt seccomp=<profile>)"
            }
        case ENOSYS:
            cause = "the kernel has no io_uring"
            fix = "run harp on Linux 5.19 or newer built with CONFIG_IO_URING"
        case ENOMEM:
            cause = "the ring's memory could not be locked"
            fix = "raise RLIMIT_MEMLOCK (ulimit -l) or lower [harp] ring_entries"
        default:
            cause = "io_uring_queue_init failed"
            fix = "check the kernel log (dmesg) and the kernel's io_uring support"
        }
        return "io_uring is unavailable: \(cause) (\(reason)); fix: \(fix)"
    }

    /// The value of /proc/sys/kernel/io_uring_disabled, when the kernel has that sysctl.
    static func sysctlDisabled() -> Int? {
        let fd = open("/proc/sys/kernel/io_uring_disabled", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 16)
        let count = read(fd, &bytes, bytes.count)
        guard count > 0 else { return nil }
        return Int(String(decoding: bytes[0..<count], as: UTF8.self).filter(\.isNumber))
    }

    /// `HARP_TEST_IO_URING_ERROR=EPERM` (or ENOSYS, ENOMEM) makes ring setup fail as if the
    /// kernel had refused it, so the startup error path can be tested on any machine.
    static func forcedFailure() -> RingUnavailable? {
        guard let raw = getenv("HARP_TEST_IO_URING_ERROR") else { return nil }
        switch String(cString: raw) {
        case "EPERM": return RingUnavailable(errno: EPERM)
        case "ENOSYS": return RingUnavailable(errno: ENOSYS)
        case "ENOMEM": return RingUnavailable(errno: ENOMEM)
        default: return nil
        }
    }
}

