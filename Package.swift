// swift-tools-version:6.1
import PackageDescription

/// Upcoming features the whole package builds with (see docs/style.md).
let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("NonisolatedNonsendingByDefault"),
    // Release builds only (tests run debug builds, with every check): the kernel's generic
    // framing and stream code specialized into the plugins, and no run-time exclusivity
    // checks (loop-confined state is checked by `assertInLoop` in debug builds instead).
    // A perf profile of a 1 KiB proxied request: libswiftCore 12.5% -> 7.2% of harp's
    // samples (tuple-metadata lookups for `FrameDecision` and swift_beginAccess gone);
    // `bench/http.sh`-style A/B rounds: 26.2 -> 25.8 and 23.3 -> 22.3 CPU µs per request.
    .unsafeFlags(["-cross-module-optimization", "-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "harp",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "harp", targets: ["harp"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // Only what Swift's importer cannot reach, plus the system libraries harp links.
        .target(
            name: "CShims",
            linkerSettings: [
                .linkedLibrary("uring"),
                .linkedLibrary("ssl"),
                .linkedLibrary("crypto"),
                .linkedLibrary("z"),
                .linkedLibrary("sqlite3"),
                .linkedLibrary("snappy"),
            ]
        ),
        .target(
            name: "HarpKernel",
            dependencies: [
                "CShims",
                // Plugins contribute CLI subcommands through the Plugin protocol.
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "TCPForward",
            dependencies: ["HarpKernel", .product(name: "CoreMetrics", package: "swift-metrics")],
            path: "Sources/Plugins/TCPForward",
            swiftSettings: strictSettings
        ),
        .target(
            name: "Admin",
            dependencies: ["HarpKernel"],
            path: "Sources/Plugins/Admin",
            swiftSettings: strictSettings
        ),
        .target(
            name: "HTTPProxy",
            dependencies: ["HarpKernel", .product(name: "CoreMetrics", package: "swift-metrics")],
            path: "Sources/Plugins/HTTPProxy",
            swiftSettings: strictSettings
        ),
        .target(
            name: "WebSocket",
            dependencies: ["HarpKernel", "HTTPProxy", .product(name: "CoreMetrics", package: "swift-metrics")],
            path: "Sources/Plugins/WebSocket",
            swiftSettings: strictSettings
        ),
        .target(
            name: "FRP",
            dependencies: [
                "HarpKernel", "CShims",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/Plugins/FRP",
            swiftSettings: strictSettings
        ),
        .target(
            name: "ExApps",
            dependencies: [
                "HarpKernel", "HTTPProxy", "FRP",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/Plugins/ExApps",
            swiftSettings: strictSettings
        ),
        .target(
            name: "BlockExchange",
            dependencies: [
                "HarpKernel", "CShims",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/Plugins/BlockExchange",
            swiftSettings: strictSettings
        ),
        // `harp bench transfer`: a fixture that starts its own nodes, kept out of the plugin.
        .target(
            name: "HarpBench",
            dependencies: [
                "HarpKernel", "BlockExchange", "CShims",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/Plugins/HarpBench",
            swiftSettings: strictSettings
        ),
        .target(
            name: "MetadataSync",
            dependencies: [
                "HarpKernel", "BlockExchange",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Plugins/MetadataSync",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "harp",
            dependencies: [
                "HarpKernel",
                "TCPForward",
                "HTTPProxy",
                "WebSocket",
                "Admin",
                "FRP",
                "ExApps",
                "BlockExchange",
                "MetadataSync",
                "HarpBench",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
        // Starts the real `harp` binary and talks to it over loopback sockets.
        .target(
            name: "HarpTestSupport",
            dependencies: ["HarpKernel"],
            path: "Tests/HarpTestSupport",
            exclude: ["p2p_peer.py"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "HarpKernelTests",
            dependencies: ["HarpKernel", "CShims", "HarpTestSupport", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "TCPForwardTests",
            dependencies: ["TCPForward", "HarpTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "HTTPProxyTests",
            dependencies: ["HTTPProxy", "HarpTestSupport"],
            exclude: ["hostile_clients.py"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "WebSocketTests",
            dependencies: ["WebSocket", "HarpTestSupport"],
            exclude: ["ws_peer.py"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "FRPTests",
            dependencies: ["FRP", "HarpTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ExAppsTests",
            dependencies: ["ExApps", "HarpTestSupport"],
            exclude: ["exapp.py"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "BlockExchangeTests",
            dependencies: ["BlockExchange", "HarpBench", "HarpTestSupport"],
            exclude: ["fastcdc_reference.py", "hostile_peer.py"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "MetadataSyncTests",
            dependencies: ["MetadataSync", "HarpTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "harpTests",
            dependencies: ["HarpTestSupport"],
            exclude: ["stalled_peer.py"],
            swiftSettings: strictSettings
        ),
    ]
)
