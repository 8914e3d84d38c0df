import CoreMetrics
import Prometheus
import Synchronization

/// Process-wide metrics: plugins record through swift-metrics (`Counter`, `Meter`, `Timer`);
/// `harp serve` installs a Prometheus backend once, before any plugin is built, and the
/// admin plugin serves `text()` at /metrics.
public enum MetricsExport {
    private static let registry = Mutex<PrometheusCollectorRegistry?>(nil)

    /// Installs the Prometheus backend (idempotent: swift-metrics allows one bootstrap).
    public static func bootstrap() {
        registry.withLock { current in
            guard current == nil else { return }
            let created = PrometheusCollectorRegistry()
            var factory = PrometheusMetricsFactory(registry: created)
            // Request latencies: 100 µs to 60 s.
            factory.defaultDurationHistogramBuckets = [
                .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5),
                .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
                .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(60),
            ]
            MetricsSystem.bootstrap(factory)
            current = created
        }
    }

    /// The Prometheus text exposition of every metric recorded so far.
    public static func text() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.withLock { $0 }?.emit(into: &buffer)
        return buffer
    }
}
