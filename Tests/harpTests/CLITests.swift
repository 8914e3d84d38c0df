import Foundation
import HarpTestSupport
import Testing

@Suite("harp command line")
struct CLITests {
    @Test("harp plugins lists tcp with its summary")
    func pluginsListsTCP() throws {
        let result = try HarpProcess.run(["plugins"])
        #expect(result.status == 0)
        let line = result.stdout.split(separator: "\n").first { $0.hasPrefix("tcp ") }
        #expect(line?.contains("splice") == true, "got: \(result.stdout)")
    }

    @Test("harp --version prints the version")
    func version() throws {
        let result = try HarpProcess.run(["--version"])
        #expect(result.status == 0)
        #expect(result.stdout == "0.1.0\n", "the version Harp.version names")
    }

    @Test("config check prints the effective config with defaults filled in")
    func configCheckPrintsEffectiveConfig() throws {
        let result = try HarpProcess.run(["config", "check"], config: """
            [[tcp.forward]]
            listen = "127.0.0.1:17000"
            upstream = "unix:/run/app.sock"
            """)
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout.contains("[[tcp.forward]]"))
        #expect(result.stdout.contains("upstream = \"unix:/run/app.sock\""))
        #expect(result.stdout.contains("idle_timeout = \"30m\""))
        #expect(result.stdout.contains("shutdown_grace = \"10s\""))
    }

    @Test("config errors name the key, the value and what is allowed", arguments: [
        ("[[tcp.forward]]\nlisten = \"127.0.0.1\"\nupstream = \"127.0.0.1:1\"",
         "tcp.forward[0].listen = \"127.0.0.1\" is invalid: missing :port; expected an address like"),
        ("[[tcp.forward]]\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:99999\"",
         "tcp.forward[0].upstream = \"127.0.0.1:99999\" is invalid: port must be 1-65535"),
        ("[[tcp.forward]]\nlisten = \"127.0.0.1:1\"\nupstrem = \"127.0.0.1:2\"",
         "unknown key tcp.forward[0].upstrem; allowed here: listen, upstream"),
        ("[[tcp.forward]]\nlisten = \"127.0.0.1:1\"",
         "tcp.forward[0].upstream is missing"),
        ("[[tcp.forward]]\nlisten = 7000\nupstream = \"127.0.0.1:2\"",
         "tcp.forward[0].listen = 7000 is invalid: expected a string, found an integer"),
        ("[[tcp.forward]]\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\nidle_timeout = \"soon\"",
         "tcp.forward[0].idle_timeout = \"soon\" is invalid: expected a duration such as 30"),
        ("[harp]\nthreads = -1", "harp.threads = -1 is invalid: expected 0 (automatic: half the usable CPUs) to 1024"),
        ("[harp]\nlog_level = \"loud\"", "harp.log_level = \"loud\" is invalid: expected one of trace, debug, info"),
        ("[harp]\nplugins = [\"nope\"]", "unknown plugin \"nope\"; registered plugins: tcp, http"),
        ("[nope]\nx = 1", "unknown key nope; allowed here: harp, tcp, http"),
        ("[harp\nthreads = 1", "config error: "),
        ("[[tcp.forward]]\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n[[tcp.forward]]\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:3\"",
         "tcp.forward[1].listen = \"127.0.0.1:1\" is invalid: already used by tcp.forward[0]"),
    ])
    func configErrors(config: String, message: String) throws {
        let result = try HarpProcess.run(["config", "check"], config: config)
        #expect(result.status == 1)
        #expect(result.stderr.contains(message), "stderr: \(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1, "one line: \(result.stderr)")
    }

    @Test("a syntax error names the file, line and column")
    func syntaxErrorHasPosition() throws {
        let result = try HarpProcess.run(["config", "check"], config: "[harp]\nthreads = = 2\n")
        #expect(result.status == 1)
        #expect(result.stderr.contains(".toml:2:"), "stderr: \(result.stderr)")
    }

    @Test("serve refuses a config error before listening")
    func serveRefusesBadConfig() throws {
        let result = try HarpProcess.run(["serve"], config: "[harp]\nshutdown_grace = -3\n")
        #expect(result.status == 1)
        #expect(result.stderr.contains("harp.shutdown_grace = -3 is invalid"), "stderr: \(result.stderr)")
    }

    @Test("a missing config file is named in the error")
    func missingConfigFile() throws {
        let result = try HarpProcess.run(["serve", "--config", "/nonexistent/harp.toml"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("cannot read /nonexistent/harp.toml: No such file or directory"))
    }

    @Test("io_uring unavailable: one line naming the cause and the fix, non-zero exit", arguments: [
        ("EPERM", "seccomp"), ("ENOSYS", "kernel has no io_uring"), ("ENOMEM", "RLIMIT_MEMLOCK"),
    ])
    func ringUnavailable(errno: String, cause: String) throws {
        let result = try HarpProcess.run(["serve"], environment: ["HARP_TEST_IO_URING_ERROR": errno])
        #expect(result.status != 0)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "stderr: \(result.stderr)")
        #expect(result.stderr.hasPrefix("harp: io_uring is unavailable: "))
        #expect(result.stderr.contains(cause))
        #expect(result.stderr.contains("fix: "))
    }

    @Test("a port already in use is a startup error naming the address")
    func portInUse() throws {
        let blocker = try EchoServer()
        defer { blocker.stop() }
        let result = try HarpProcess.run(["serve"], config: """
            [[tcp.forward]]
            listen = "\(blocker.address)"
            upstream = "127.0.0.1:9"
            """)
        #expect(result.status == 1)
        #expect(result.stderr.contains("bind \(blocker.address): Address already in use"), "stderr: \(result.stderr)")
    }

    @Test("--plugins selects plugins and refuses unknown ones")
    func pluginSelection() throws {
        let result = try HarpProcess.run(["serve", "--plugins", "tcp,webdav"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("unknown plugin \"webdav\""))
    }
}
