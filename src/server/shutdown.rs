//! The drain: stop accepting, close every WebSocket with 1001, give proxy tunnels their own
//! grace, and wait (bounded) until the last connection is gone. It wakes when the last slot is
//! given back rather than polling.

use std::time::Duration;

use super::state::Server;
use crate::ws::close::CloseReason;

/// Begins shutdown: listeners stop, every WebSocket client gets Close 1001, proxy tunnels get
/// `proxy.shutdown_grace` to end on their own and then Close 1001 on both sides. Waits until
/// every connection finished or `grace` passed; returns whether all finished in time.
pub async fn drain(server: &Server, grace: Duration) -> bool {
    server.shutdown.begin();
    let conns = server.heartbeat.connections();
    tracing::info!(connections = conns.len(), grace = ?grace, "closing WebSocket connections with 1001");
    for c in &conns {
        c.request_close(CloseReason::Shutdown);
    }
    let proxy = &server.proxy;
    let tunnel_grace = server.config.proxy.shutdown_grace.get();
    if proxy.open_tunnels() > 0 && !tunnel_grace.is_zero() {
        tracing::info!(tunnels = proxy.open_tunnels(), grace = ?tunnel_grace, "waiting for proxy tunnels to end (proxy.shutdown_grace)");
        let _ = tokio::time::timeout(tunnel_grace, proxy.slots.wait_empty()).await;
    }
    proxy.tunnels.close_all();
    let all_gone = async {
        server.sessions.slots.wait_empty().await;
        proxy.slots.wait_empty().await;
    };
    tokio::time::timeout(grace, all_gone).await.is_ok()
}
