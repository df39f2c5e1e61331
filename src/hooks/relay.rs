//! `on_message = "forward"` and `on_disconnect`: one connection's messages go to the backend in
//! order, on a task of their own, so the session never waits for the backend and a slow backend
//! holds up no other connection. At most `hooks.max_in_flight` of a connection's messages wait
//! for the backend; one more is refused at once with a sentence for the client. The disconnect
//! hook follows the last forwarded message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use base64::Engine;
use bytes::Bytes;
use http::Uri;
use tokio::sync::mpsc;

use super::answer::{self, Reply};
use super::{Conn, HookError, Hooks, Repeat, error_message};
use crate::broker::Publication;
use crate::config::MessageFailure;
use crate::hub::Member;
use crate::metrics::METRICS;
use crate::ws::Relay;

/// What a forwarding task works on.
#[derive(Debug)]
enum Item {
    Message { text: bool, payload: Bytes },
    Closed(u16),
}

#[derive(Debug)]
struct Shared {
    hooks: Arc<Hooks>,
    conn: Conn,
    member: Arc<dyn Member>,
    on_message: Option<Uri>,
    on_disconnect: Option<Uri>,
    /// Messages handed over and not yet answered.
    in_flight: AtomicUsize,
}

/// One connection's link to its backend (a [`Relay`] for its session).
#[derive(Debug)]
pub struct Forwarder {
    shared: Arc<Shared>,
    /// The forwarding task's queue, started with the first message: a connection that never
    /// sends costs no task.
    tx: OnceLock<mpsc::UnboundedSender<Item>>,
}

impl Forwarder {
    /// The relay of connection `conn` (reached through `member`), forwarding to `on_message`
    /// and telling `on_disconnect`.
    pub fn new(
        hooks: Arc<Hooks>,
        conn: Conn,
        member: Arc<dyn Member>,
        on_message: Option<Uri>,
        on_disconnect: Option<Uri>,
    ) -> Self {
        Forwarder {
            shared: Arc::new(Shared {
                hooks,
                conn,
                member,
                on_message,
                on_disconnect,
                in_flight: AtomicUsize::new(0),
            }),
            tx: OnceLock::new(),
        }
    }

    fn queue(&self) -> &mpsc::UnboundedSender<Item> {
        self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(self.shared.clone(), rx));
            tx
        })
    }
}

impl Relay for Forwarder {
    fn forward(&self, text: bool, payload: Bytes) -> Result<(), String> {
        if self.shared.on_message.is_none() {
            return Ok(());
        }
        let max = self.shared.hooks.settings().max_in_flight;
        if self.shared.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            METRICS.hook_forward_refused.inc();
            return Err(format!(
                "this message was not forwarded: {max} earlier messages of this connection are still waiting for the backend (hooks.max_in_flight); wait for their answers before sending more"
            ));
        }
        // The task lives as long as this sender (the session), so a send cannot fail while we
        // hold it; a failure would mean the task panicked, which is logged by tokio.
        let _ = self.queue().send(Item::Message { text, payload });
        Ok(())
    }

    fn closed(&self, code: u16) {
        if let Some(tx) = self.tx.get() {
            let _ = tx.send(Item::Closed(code));
        } else if self.shared.on_disconnect.is_some() {
            let shared = self.shared.clone();
            tokio::spawn(async move { shared.disconnected(code).await });
        }
    }
}

async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Item>) {
    while let Some(item) = rx.recv().await {
        match item {
            Item::Message { text, payload } => {
                shared.forward(text, payload).await;
                shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            Item::Closed(code) => shared.disconnected(code).await,
        }
    }
}

impl Shared {
    async fn forward(&self, text: bool, payload: Bytes) {
        let Some(url) = &self.on_message else { return };
        let mut o = self.conn.json("message");
        if text {
            o.insert(
                "data".into(),
                String::from_utf8_lossy(&payload).into_owned().into(),
            );
        } else {
            o.insert(
                "b64data".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(&payload)
                    .into(),
            );
        }
        let body = Bytes::from(serde_json::Value::Object(o).to_string());
        let answered = self
            .hooks
            .call(url, body, Repeat::Once)
            .await
            .and_then(|v| {
                answer::reply(v, self.hooks.max_group_bytes).map_err(|why| HookError::BadAnswer {
                    url: url.to_string(),
                    why,
                })
            });
        match answered {
            Ok(r) => self.apply(r).await,
            Err(e) => self.failed(&e),
        }
    }

    async fn apply(&self, r: Reply) {
        for m in &r.messages {
            if !self.member.send(&m.data, m.kind) {
                tracing::debug!(conn = %self.conn.id, "a reply found the connection closing or full");
            }
        }
        for (groups, m) in r.publish {
            for g in groups {
                let p = Publication::new(g.as_str(), m.data.clone(), m.kind);
                if let Err(e) = self.hooks.hub().publish(p).await {
                    tracing::warn!(conn = %self.conn.id, group = %g, error = %e, "a backend's publish failed");
                    error_message(
                        self.member.as_ref(),
                        503,
                        &format!("the backend's answer could not be published to {g:?} ({e})"),
                    );
                }
            }
        }
        if let Some((code, reason)) = r.close {
            self.member.disconnect(code, &reason);
        }
    }

    fn failed(&self, e: &HookError) {
        tracing::warn!(conn = %self.conn.id, error = %e, "a forwarded message did not reach the backend");
        match self.hooks.settings().on_message_failure {
            MessageFailure::Error => error_message(
                self.member.as_ref(),
                e.status(),
                &format!("your message was not delivered: {e}"),
            ),
            MessageFailure::Close => self.member.disconnect(1011, e.reason()),
        }
    }

    async fn disconnected(&self, code: u16) {
        let Some(url) = &self.on_disconnect else {
            return;
        };
        let mut o = self.conn.json("disconnect");
        o.insert("code".into(), code.into());
        let body = Bytes::from(serde_json::Value::Object(o).to_string());
        match self.hooks.call(url, body, Repeat::Harmless).await {
            // The answer's body means nothing here: a 200 is all it takes.
            Ok(_) | Err(HookError::BadAnswer { .. }) => {}
            Err(e) => {
                tracing::warn!(conn = %self.conn.id, error = %e, "the disconnect hook failed")
            }
        }
    }
}
