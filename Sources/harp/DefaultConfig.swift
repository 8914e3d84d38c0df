/// The configuration `harp serve` runs without `--config`: loopback only, so it is safe to
/// start anywhere, and everything it serves can be seen with curl at once, because the
/// forwards point at harp's own metrics endpoint.
let defaultConfigTOML = """
[harp]
threads = 1
log_level = "info"
shutdown_grace = "5s"

# Prometheus metrics of this very process.
[admin]
listen = "127.0.0.1:9090"

# HTTP reverse proxy: http://127.0.0.1:8080/metrics reaches the admin endpoint through it.
[http]
listen = ["127.0.0.1:8080"]

[[http.routes]]
path_prefix = "/"
upstream = "http://127.0.0.1:9090"

# L4 forward, spliced: curl http://127.0.0.1:7000/metrics reaches the same endpoint.
[[tcp.forward]]
listen = "127.0.0.1:7000"
upstream = "127.0.0.1:9090"
"""
