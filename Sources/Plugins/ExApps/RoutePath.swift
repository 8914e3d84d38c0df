/// The path a route is matched against: percent-escapes of unreserved characters decoded
/// (RFC 3986 §2.3: `%61` is `a`) and runs of `/` merged. An ExApp's framework does both before
/// it routes, so `/%61dmin` and `//admin` reach its `/admin` handler: matched as sent, they
/// slipped past an ADMIN route `^/admin` to a PUBLIC catch-all (beyond HaRP, which matched
/// the raw path). Other escapes (`%2F`, `%20`, `%25`) stay as they are: decoding them would
/// change what the path means. The request goes upstream unchanged.
enum RoutePath {
    static func normalized(_ path: String) -> String {
        // Most paths have neither: no copy (this runs on every request).
        guard path.utf8.contains(UInt8(ascii: "%")) || hasDoubleSlash(path.utf8) else { return path }
        let bytes = Array(path.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "%"), index + 2 < bytes.count, let high = hex(bytes[index + 1]), let low = hex(bytes[index + 2]),
               isUnreserved(high << 4 | low) {
                out.append(high << 4 | low)
                index += 3
                continue
            }
            if byte == UInt8(ascii: "/"), out.last == UInt8(ascii: "/") {
                index += 1
                continue
            }
            out.append(byte)
            index += 1
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func hasDoubleSlash(_ bytes: String.UTF8View) -> Bool {
        var previous: UInt8 = 0
        for byte in bytes {
            if byte == UInt8(ascii: "/") && previous == byte { return true }
            previous = byte
        }
        return false
    }

    private static func hex(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    private static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
        case UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"): true
        default: false
        }
    }
}
