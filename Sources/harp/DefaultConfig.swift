/// The configuration `harp serve` runs without `--config`: loopback only, so it is safe to
/// start anywhere, and it does something you can see with curl.
let defaultConfigTOML = """
[harp]
threads = 1
log_level = "info"
shutdown_grace = "5s"

# A TCP forward from 127.0.0.1:7000 to 127.0.0.1:7001: start any server on 7001
# (for example `python3 -m http.server 7001`) and reach it through harp on 7000.
[[tcp.forward]]
listen = "127.0.0.1:7000"
upstream = "127.0.0.1:7001"
"""
