@testable import BlockExchange
@testable import HarpBench
import Foundation
import HarpKernel
import HarpTestSupport
import Testing

/// Block exchange between real harp nodes on loopback: multi-peer downloads, peers that die,
/// lie or join late, resumption after a kill, chunk reuse, and the CLI's errors.
@Suite("p2p swarm", .serialized)
struct SwarmTests {
    static let MiB = 1 << 20

    /// Origin + seeders holding `name` (hard links: one copy on disk, indexed by each), and a
    /// downloader; all started and connected.
    struct Swarm {
        let seeders: [P2PNode]
        let downloader: P2PNode
        let root: String
        let size: Int
        let hash: String
        var all: [P2PNode] { seeders + [downloader] }

        init(seeders count: Int, size: Int, uploadRate: Int = 0, start: Bool = true) throws {
            seeders = try (0..<count).map { _ in try P2PNode() }
            downloader = try P2PNode()
            self.size = size
            try P2PNode.makeFile(seeders[0].folder + "/file", size: size)
            for seeder in seeders.dropFirst() { try FileManager.default.linkItem(atPath: seeders[0].folder + "/file", toPath: seeder.folder + "/file") }
            hash = try P2PNode.sha256(seeders[0].folder + "/file")
            try P2PNode.mesh(seeders + [downloader], uploadRates: Array(repeating: uploadRate, count: count) + [0])
            for node in seeders + [downloader] where start { try node.start() }
            if start { try downloader.waitConnected(to: seeders) }
            root = start ? try seeders[0].add("file") : ""
        }

        func remove() { for node in all { node.remove() } }
    }

    @Test("a 1 GiB file from 3 seeders: hash verified, bytes from every seeder, endgame duplicates only")
    func threeSeeders() throws {
        let swarm = try Swarm(seeders: 3, size: 1 << 30)
        defer { swarm.remove() }
        let out = swarm.downloader.folder + "/file"
        let answer = try P2PNode.answer(of: try swarm.downloader.startGet(swarm.root, into: out))
        #expect(try P2PNode.sha256(out) == swarm.hash)
        let byPeer = answer["bytes_by_peer"] as? [String: Int] ?? [:]
        for seeder in swarm.seeders { #expect(byPeer[seeder.id, default: 0] > 0, "\(byPeer)") }
        // Only the endgame may fetch a chunk twice (its loser arrives before the cancel).
        let wasted = answer["wasted_bytes"] as? Int ?? -1
        #expect(wasted >= 0 && wasted <= 3 * FastCDC.maximumSize)
        #expect(byPeer.values.reduce(0, +) == swarm.size + wasted)
        // No partial file is left beside the target.
        #expect(!FileManager.default.fileExists(atPath: Transfer.partialPath(for: out)))
        // The downloaded file is indexed: the downloader now serves it (status counts it).
        #expect(try swarm.downloader.storage(["status"])["files"] as? Int == 1)
    }

    @Test("a seeder killed mid-transfer: the download completes from the others")
    func seederKilled() throws {
        let swarm = try Swarm(seeders: 3, size: 256 * Self.MiB, uploadRate: 40 * Self.MiB)
        defer { swarm.remove() }
        let out = swarm.downloader.folder + "/file"
        let get = try swarm.downloader.startGet(swarm.root, into: out)
        try waitUntil { swarm.downloader.downloadedBytes() >= swarm.size / 5 }
        try swarm.seeders[1].kill()
        let answer = try P2PNode.answer(of: get)
        #expect(try P2PNode.sha256(out) == swarm.hash)
        #expect(answer["size"] as? Int == swarm.size)
        try swarm.downloader.process!.waitForOutput("peer disconnected \(swarm.seeders[1].id)")
    }

    @Test("the downloader killed at ~60% and restarted resumes: re-fetched bytes stay within one in-flight window")
    func downloaderKilled() throws {
        // 20 MiB/s per seeder: the last 40% take about 3.4 s, time enough to see 60% and kill
        // (at 50 MiB/s a loaded machine can see the download finish between the two).
        let swarm = try Swarm(seeders: 3, size: 512 * Self.MiB, uploadRate: 20 * Self.MiB)
        defer { swarm.remove() }
        let out = swarm.downloader.folder + "/file"
        let get = try swarm.downloader.startGet(swarm.root, into: out)
        try waitUntil { swarm.downloader.downloadedBytes() >= swarm.size * 6 / 10 }
        try swarm.downloader.kill()
        _ = try? get.waitForExit()
        #expect(!FileManager.default.fileExists(atPath: out), "nothing at the target before it is complete")
        #expect(FileManager.default.fileExists(atPath: Transfer.partialPath(for: out)))
        try swarm.downloader.start()
        let answer = try P2PNode.answer(of: try swarm.downloader.startGet(swarm.root, into: out))
        #expect(try P2PNode.sha256(out) == swarm.hash)
        #expect(answer["size"] as? Int == swarm.size)
        try swarm.downloader.process!.waitForOutput("resumed_bytes=")
        // What the seeders sent in both runs, less the file: what the kill cost. The window:
        // each seeder's pipeline (20 MiB/s × (RTT + 250 ms) ≈ 5 MiB, at most 32 MiB) plus
        // the 16 MiB recorded in one go.
        var sent = 0
        for seeder in swarm.seeders { sent += try seeder.counters(for: swarm.downloader)["bytes_sent"] as? Int ?? 0 }
        let refetched = sent - swarm.size
        print("downloader killed at 60%: \(refetched / Self.MiB) MiB fetched twice")
        #expect(refetched <= 3 * 32 * Self.MiB + 16 * Self.MiB, "\(refetched) bytes fetched twice")
    }

    @Test("a peer whose copy has flipped bits: its chunks are rejected and fetched elsewhere, and it is disconnected")
    func bitFlipper() throws {
        let good = try P2PNode(), liar = try P2PNode(), downloader = try P2PNode()
        defer { for node in [good, liar, downloader] { node.remove() } }
        let size = 64 * Self.MiB
        try P2PNode.makeFile(good.folder + "/file", size: size)
        try FileManager.default.copyItem(atPath: good.folder + "/file", toPath: liar.folder + "/file")
        let hash = try P2PNode.sha256(good.folder + "/file")
        try P2PNode.mesh([good, liar, downloader], uploadRates: [20 * Self.MiB, 0, 0])
        for node in [good, liar, downloader] { try node.start() }
        try downloader.waitConnected(to: [good, liar])
        let root = try good.add("file")
        #expect(try liar.add("file") == root)
        // Bit rot behind the index's back: a byte flipped every 128 KiB (so in every chunk),
        // the file's mtime put back, so its stamp still looks current.
        #expect(try shell("""
            f=\(liar.folder)/file; t=$(stat -c %y "$f")
            python3 -c "
            import sys; f=open(sys.argv[1],'r+b')
            for o in range(0, \(size), 131072):
                f.seek(o); b=f.read(1); f.seek(o); f.write(bytes([b[0]^1]))
            " "$f"
            touch -d "$t" "$f"
            """).status == 0)
        let out = downloader.folder + "/file"
        let answer = try P2PNode.answer(of: try downloader.startGet(root, into: out))
        #expect(try P2PNode.sha256(out) == hash)
        let byPeer = answer["bytes_by_peer"] as? [String: Int] ?? [:]
        #expect(byPeer[good.id] == size, "\(byPeer)")
        try downloader.process!.waitForOutput("peer \(liar.id) sent 3 chunks that do not match their IDs: disconnected")
        #expect(try downloader.counters(for: liar)["bad_chunks"] as? Int ?? 0 >= 3)
    }

    @Test("a peer that claims content whose file it lost: don't-have, and the chunks come from elsewhere")
    func claimsWithoutBytes() throws {
        let good = try P2PNode(), forgetful = try P2PNode(), downloader = try P2PNode()
        defer { for node in [good, forgetful, downloader] { node.remove() } }
        try P2PNode.makeFile(good.folder + "/file", size: 48 * Self.MiB)
        try FileManager.default.copyItem(atPath: good.folder + "/file", toPath: forgetful.folder + "/file")
        try P2PNode.mesh([good, forgetful, downloader], uploadRates: [20 * Self.MiB, 0, 0])
        for node in [good, forgetful, downloader] { try node.start() }
        try downloader.waitConnected(to: [good, forgetful])
        let root = try good.add("file")
        try FileManager.default.removeItem(atPath: forgetful.folder + "/file")  // its index still lists it
        let out = downloader.folder + "/file"
        let answer = try P2PNode.answer(of: try downloader.startGet(root, into: out))
        #expect(try P2PNode.sha256(out) == P2PNode.sha256(good.folder + "/file"))
        #expect((answer["bytes_by_peer"] as? [String: Int])?[good.id] == 48 * Self.MiB)
    }

    @Test("two downloaders from one rate-limited origin trade chunks: the origin uploads at most 1.1× the file")
    func twoDownloaders() throws {
        let origin = try P2PNode(), first = try P2PNode(), second = try P2PNode()
        defer { for node in [origin, first, second] { node.remove() } }
        let size = 96 * Self.MiB
        try P2PNode.makeFile(origin.folder + "/file", size: size)
        try P2PNode.mesh([origin, first, second], uploadRates: [24 * Self.MiB, 0, 0])
        for node in [origin, first, second] { try node.start() }
        try first.waitConnected(to: [origin, second])
        try second.waitConnected(to: [origin])
        let root = try origin.add("file")
        let gets = [try first.startGet(root, into: first.folder + "/file"), try second.startGet(root, into: second.folder + "/file")]
        for get in gets { _ = try P2PNode.answer(of: get) }
        let uploaded = try (origin.counters(for: first)["bytes_sent"] as? Int ?? 0) + (origin.counters(for: second)["bytes_sent"] as? Int ?? 0)
        print("two downloaders: the origin uploaded \(String(format: "%.3f", Double(uploaded) / Double(size)))× the file")
        #expect(uploaded <= size * 11 / 10, "the origin uploaded \(uploaded) bytes for a \(size)-byte file")
        #expect(try P2PNode.sha256(first.folder + "/file") == P2PNode.sha256(origin.folder + "/file"))
        #expect(try P2PNode.sha256(second.folder + "/file") == P2PNode.sha256(origin.folder + "/file"))
    }

    @Test("one byte inserted at the start of a 256 MiB file: a node holding the old version receives at most 2 chunks")
    func insertedByte() throws {
        let origin = try P2PNode(), holder = try P2PNode()
        defer { for node in [origin, holder] { node.remove() } }
        try P2PNode.makeFile(holder.folder + "/old", size: 256 * Self.MiB)
        #expect(try shell("(printf X; cat \(holder.folder)/old) > \(origin.folder)/new").status == 0)
        try P2PNode.mesh([origin, holder])
        for node in [origin, holder] { try node.start() }
        try holder.waitConnected(to: [origin])
        let root = try origin.add("new")
        let answer = try P2PNode.answer(of: try holder.startGet(root, into: holder.folder + "/new"))
        #expect(try P2PNode.sha256(holder.folder + "/new") == P2PNode.sha256(origin.folder + "/new"))
        let received = try holder.counters(for: origin)["chunks_received"] as? Int ?? -1
        #expect(received >= 1 && received <= 2, "\(received) chunks received")
        #expect(answer["local_bytes"] as? Int ?? 0 >= 256 * Self.MiB - 2 * FastCDC.maximumSize)
    }

    @Test("a seeder that joins after the download started serves part of it")
    func lateSeeder() throws {
        let origin = try P2PNode(), late = try P2PNode(), downloader = try P2PNode()
        defer { for node in [origin, late, downloader] { node.remove() } }
        let size = 128 * Self.MiB
        try P2PNode.makeFile(origin.folder + "/file", size: size)
        try FileManager.default.linkItem(atPath: origin.folder + "/file", toPath: late.folder + "/file")
        try P2PNode.mesh([origin, late, downloader], uploadRates: [24 * Self.MiB, 24 * Self.MiB, 0])
        for node in [origin, downloader] { try node.start() }
        try downloader.waitConnected(to: [origin])
        let root = try origin.add("file")
        let get = try downloader.startGet(root, into: downloader.folder + "/file")
        try waitUntil { downloader.downloadedBytes() > 0 }
        try late.start()
        let answer = try P2PNode.answer(of: get)
        let byPeer = answer["bytes_by_peer"] as? [String: Int] ?? [:]
        print("late seeder served \(byPeer[late.id, default: 0] / Self.MiB) MiB of \(size / Self.MiB)")
        #expect(byPeer[late.id, default: 0] >= size / 5, "\(byPeer)")
        #expect(try P2PNode.sha256(downloader.folder + "/file") == P2PNode.sha256(origin.folder + "/file"))
    }

    @Test("CLI errors say what to do: node not running, a root nobody has, not a root")
    func cliErrors() throws {
        let a = try P2PNode(), b = try P2PNode()
        defer { for node in [a, b] { node.remove() } }
        try P2PNode.mesh([a, b])
        let notRunning = try HarpProcess.run(["storage", "status", "--config", a.configPath])
        #expect(notRunning.status != 0 && notRunning.stderr.contains("the node is not running"), "\(notRunning.stderr)")
        #expect(notRunning.stderr.contains("harp serve --config"))
        for node in [a, b] { try node.start() }
        try a.waitConnected(to: [b])
        let unknown = try HarpProcess.run(["storage", "get", String(repeating: "ab", count: 32), "--out", a.folder + "/x", "--config", a.configPath])
        #expect(unknown.status != 0 && unknown.stderr.contains("no connected peer has"), "\(unknown.stderr)")
        let bad = try HarpProcess.run(["storage", "get", "nope", "--out", a.folder + "/x", "--config", a.configPath])
        #expect(bad.status != 0 && bad.stderr.contains("is not a content root"), "\(bad.stderr)")
        let outside = try HarpProcess.run(["storage", "add", "/etc/hostname", "--config", a.configPath])
        #expect(outside.status != 0 && outside.stderr.contains("is not inside the folder"), "\(outside.stderr)")
        // A second node on the same state directory is refused (its socket answers).
        let second = try HarpProcess(["serve", "--config", a.configPath])
        #expect(try second.waitForExit() != 0)
        #expect(second.stderr.contains("another node is running on it"), "\(second.stderr)")
    }

    @Test("a full disk: the CLI says so, nothing appears at the target, and the node goes on")
    func fullDisk() throws {
        let origin = try P2PNode(), downloader = try P2PNode()
        let small = NodeTests.temporaryDirectory()
        defer {
            _ = try? shell("umount \(small)")
            for node in [origin, downloader] { node.remove() }
            try? FileManager.default.removeItem(atPath: small)
        }
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
        // An 8 MiB file system for a 24 MiB download (tmpfs; the tests run as root).
        #expect(try shell("mount -t tmpfs -o size=8m tmpfs \(small)").status == 0, "mounting a small tmpfs needs root")
        try P2PNode.makeFile(origin.folder + "/file", size: 24 * Self.MiB)
        try P2PNode.mesh([origin, downloader])
        for node in [origin, downloader] { try node.start() }
        try downloader.waitConnected(to: [origin])
        let root = try origin.add("file")
        let get = try HarpProcess.run(["storage", "get", root, "--out", small + "/file", "--config", downloader.configPath])
        // Checked before any chunk is fetched: the file does not fit with min_free to spare.
        #expect(get.status != 0 && get.stderr.contains("no room"), "\(get.stderr)")
        #expect(get.stderr.contains("the partial file is kept"))
        #expect(!FileManager.default.fileExists(atPath: small + "/file"))
        try downloader.process!.waitForOutput("fetching \(root) failed")
        // The node still serves its CLI and can fetch into a disk with room.
        _ = try P2PNode.answer(of: try downloader.startGet(root, into: downloader.folder + "/file"))
        #expect(try P2PNode.sha256(downloader.folder + "/file") == P2PNode.sha256(origin.folder + "/file"))
    }

    @Test("download_rate holds a download to its rate; the metrics count peers, bytes and chunks per peer")
    func downloadLimitAndMetrics() throws {
        let origin = try P2PNode(), downloader = try P2PNode()
        defer { for node in [origin, downloader] { node.remove() } }
        let size = 24 * Self.MiB, admin = freePort()
        try P2PNode.makeFile(origin.folder + "/file", size: size)
        try origin.configure(peers: [downloader])
        try downloader.configure(peers: [origin], downloadRate: 8 * Self.MiB, admin: admin)
        for node in [origin, downloader] { try node.start() }
        try downloader.waitConnected(to: [origin])
        let root = try origin.add("file")
        let answer = try P2PNode.answer(of: try downloader.startGet(root, into: downloader.folder + "/file"))
        // One maximum chunk of burst, then 8 MiB/s: at least (24 − 4) / 8 = 2.5 s.
        let seconds = answer["seconds"] as? Double ?? 0
        #expect(seconds >= 2.4, "24 MiB at 8 MiB/s took \(seconds) s")
        let metrics = try shell("curl -s http://127.0.0.1:\(admin)/metrics").output
        let lines = metrics.split(separator: "\n").map(String.init)
        #expect(lines.contains("harp_p2p_peers_connected 1.0"), "\(metrics)")
        #expect(lines.contains("harp_p2p_transfers_active 0.0"))
        #expect(lines.contains("harp_p2p_received_bytes_total{peer=\"\(origin.id)\"} \(size)"), "\(metrics)")
        let chunks = lines.first { $0.hasPrefix("harp_p2p_received_chunks_total{peer=\"\(origin.id)\"}") }
        #expect((chunks?.split(separator: " ").last.flatMap { Int($0) } ?? 0) >= 6)
    }

    @Test("harp bench transfer runs its nodes and prints every JSON key; the ideal speedup follows caps and joins")
    func benchTransfer() throws {
        let result = try HarpProcess.run(["bench", "transfer", "--size", "24MiB", "--peers", "2", "--peer-rate", "16MiB/s", "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(json["hash_ok"] as? Bool == true)
        #expect(json["size_bytes"] as? Int == 24 * Self.MiB && json["peers"] as? Int == 2 && json["join"] as? String == "all")
        #expect(json["peer_rate_bytes_per_s"] as? Int == 16 * Self.MiB && json["ideal_speedup"] as? Double == 3)
        for key in ["speedup", "cpu_seconds_per_gb"] { #expect(json[key] as? Double != nil, "\(key)") }
        let single = try #require(json["single_source"] as? [String: Any]), swarm = try #require(json["swarm"] as? [String: Any])
        for part in [single, swarm] { #expect((part["seconds"] as? Double ?? 0) > 0 && (part["bytes_per_s"] as? Double ?? 0) > 0) }
        let byPeer = try #require(swarm["bytes_by_peer"] as? [String: Int])
        #expect(Set(byPeer.keys) == ["origin", "peer1", "peer2"] && byPeer.values.reduce(0, +) >= 24 * Self.MiB, "\(byPeer)")
        // 2 GiB at 100 MiB/s from 5 sources joining a second apart: T solves
        // 100 (T + (T-1) + … + (T-4)) = 2048, T = 6.096 s, against 20.48 s alone.
        let staggered = try #require(TransferBench.idealSpeedup(size: 2 << 30, rate: 100 << 20, peers: 4, staggered: true))
        #expect(abs(staggered - 3.36) < 0.01, "\(staggered)")
        #expect(TransferBench.idealSpeedup(size: 1 << 30, rate: 0, peers: 4, staggered: false) == nil)
        // A large file: every source has joined long before the end.
        let long = try #require(TransferBench.idealSpeedup(size: 100 << 30, rate: 100 << 20, peers: 4, staggered: true))
        #expect(abs(long - 1024.0 / ((1024.0 + 10) / 5)) < 0.001)
    }

    /// Polls `condition` every 50 ms for up to `timeout` seconds.
    func waitUntil(timeout: Double = 60, _ condition: () -> Bool) throws {
        try eventually("the swarm's condition", timeout: timeout, condition)
    }
}

/// A listed peer that breaks the protocol after its Hello: one log line naming it and the
/// reason, its connection closed, the node and its other peers unaffected.
@Suite("p2p hostile peers", .serialized)
struct HostilePeerTests {
    @Test("garbage frames from a listed peer", arguments: [
        ("unknown-type", "unknown frame type 99"),
        ("oversize", "a chunk frame of 2147483647 bytes"),
        ("bad-manifest", "a manifest that does not match its root"),
        ("bad-deflate", "a manifest frame that does not inflate"),
        ("short-request", "a request frame of 5 bytes that is not one"),
        ("request-flood", "more than 1024 requests queued"),
        ("truncated-chunk", "inside a chunk"),
    ])
    func hostile(mode: String, expected: String) throws {
        let node = try P2PNode(), friend = try P2PNode(), hostile = try P2PNode()
        defer { for peer in [node, friend, hostile] { peer.remove() } }
        try node.configure(peers: [friend, hostile])
        try friend.configure(peers: [node])
        for peer in [node, friend] { try peer.start() }
        try node.waitConnected(to: [friend])
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("hostile_peer.py").path
        let seen = try shell("timeout 20 python3 \(script) \(node.port) \(hostile.dir)/node.crt \(hostile.dir)/node.key \(mode)").output
        #expect(seen == "closed", "harp kept the connection of a peer that sent \(mode)")
        try node.process!.waitForOutput(expected)
        try node.process!.waitForOutput("peer session ended \(hostile.id)")
        // The friend is still connected and the node still answers.
        #expect(!node.log.contains("peer disconnected \(friend.id)"))
        #expect(try node.storage(["status"])["node"] as? String == node.id)
    }
}
