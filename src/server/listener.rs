//! The accept loop: every accepted connection gets its own task; the loop ends when shutdown
//! begins and never on a per-connection error.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::conn;
use super::state::Server;

/// Accepts connections until shutdown begins.
pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    server.set_accepting(true);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = server.shutdown.wait() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(conn::serve(stream, peer, server.clone()));
            }
            Err(e) => {
                // Per-connection failures (reset before accept, ...) are not fatal. Running out
                // of descriptors is: back off instead of spinning, as axum's serve loop does.
                let fatal = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if fatal {
                    tracing::error!(error = %e, "accept failed; out of file descriptors or memory, retrying in 1s (raise the open files limit or lower server.max_connections)");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } else {
                    tracing::debug!(error = %e, "accept failed");
                }
            }
        }
    }
    server.set_accepting(false);
}
