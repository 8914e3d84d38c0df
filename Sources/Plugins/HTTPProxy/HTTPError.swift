/// A request harp refuses, with the status it answers and a reason for the log.
public struct HTTPError: Error, Equatable, Sendable, CustomStringConvertible {
    public let status: Int
    public let reason: String

    public init(_ status: Int, _ reason: String) {
        self.status = status
        self.reason = reason
    }

    public static func bad(_ reason: String) -> HTTPError { HTTPError(400, reason) }

    public var description: String { "\(status) \(reason)" }
}
