import Foundation
import Glibc

/// Waits for a condition instead of sleeping a guessed time: polls every `interval` seconds
/// until `condition` holds; true, or false once `timeout` seconds have passed.
public func waitUntil(timeout: Double = 20, interval: Double = 0.05, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        if try condition() { return true }
        guard Date() < deadline else { return false }
        usleep(useconds_t(interval * 1_000_000))
    }
}

/// `waitUntil` that fails the test when the condition does not hold in time, naming what was
/// awaited and, when given, what the system looked like (`context`: logs, directory listings).
public func eventually(_ what: String, timeout: Double = 20, interval: Double = 0.05, context: () -> String = { "" },
                       _ condition: () throws -> Bool) throws {
    guard try waitUntil(timeout: timeout, interval: interval, condition) else {
        let detail = context()
        throw TestFailure("not within \(Int(timeout)) s: \(what)\(detail.isEmpty ? "" : "\n" + detail)")
    }
}
