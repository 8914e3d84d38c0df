import Admin
import BlockExchange
import ExApps
import FRP
import HTTPProxy
import HarpKernel
import MetadataSync
import TCPForward
import WebSocket

/// The one static list of plugins compiled into harp. Order here is the order of
/// `harp plugins`; start order follows dependencies.
let registeredPlugins = PluginRegistry([
    TCPForwardPlugin.self,
    HTTPProxyPlugin.self,
    WebSocketPlugin.self,
    AdminPlugin.self,
    FRPPlugin.self,
    ExAppsPlugin.self,
    BlockExchangePlugin.self,
    MetadataSyncPlugin.self,
])
