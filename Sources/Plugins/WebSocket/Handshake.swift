import HTTPProxy

/// The client's opening handshake, checked as RFC 6455 §4.2.1 requires of a server.
enum Handshake {
    static func check(_ request: HTTPRequestHead) -> UpgradeRefusal? {
        guard request.method == "GET" else { return UpgradeRefusal(status: 400, reason: "WebSocket handshake must be a GET") }
        guard request.minorVersion >= 1 else { return UpgradeRefusal(status: 400, reason: "WebSocket needs HTTP/1.1") }
        guard request.headers.contains("Upgrade", token: "websocket") else {
            return UpgradeRefusal(status: 400, reason: "Upgrade must be websocket")
        }
        guard request.headers.contains("Connection", token: "upgrade") else {
            return UpgradeRefusal(status: 400, reason: "Connection must include upgrade")
        }
        guard request.headers.count(of: "Sec-WebSocket-Key") == 1, let key = request.headers["Sec-WebSocket-Key"],
              isSixteenBytesBase64(key) else {
            return UpgradeRefusal(status: 400, reason: "Sec-WebSocket-Key must be 16 bytes in base64")
        }
        guard request.headers["Sec-WebSocket-Version"] == "13" else {
            return UpgradeRefusal(status: 426, reason: "Sec-WebSocket-Version must be 13",
                                  headers: [("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")])
        }
        return nil
    }

    /// 16 bytes encode to 22 base64 characters plus `==`.
    static func isSixteenBytesBase64(_ key: String) -> Bool {
        let bytes = Array(key.utf8)
        guard bytes.count == 24, bytes[22] == UInt8(ascii: "="), bytes[23] == UInt8(ascii: "=") else { return false }
        let alphabet = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        guard bytes[0..<22].allSatisfy(alphabet.contains) else { return false }
        // The last character carries 2 bits of data; the 4 padding bits must be zero.
        let last = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8).firstIndex(of: bytes[21])!
        return last & 0x0F == 0
    }
}
