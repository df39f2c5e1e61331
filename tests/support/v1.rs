//! A `wsgate.v1` test client: commands with ids, replies matched by id, publications and events
//! kept in arrival order.

use std::collections::VecDeque;
use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{WAIT, Ws};

/// A connection speaking `wsgate.v1`.
pub struct V1Client {
    pub ws: Ws,
    next_id: u64,
    /// Messages that are not replies (`pub`, `join`, `leave`), oldest first.
    pub inbox: VecDeque<Value>,
}

/// Opens a WebSocket to `path` offering `wsgate.v1`; panics unless the server chose it.
pub async fn connect_v1(addr: SocketAddr, path: &str) -> V1Client {
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("a valid request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "wsgate.v1".parse().expect("a header value"),
    );
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect within the wait limit")
        .expect("handshake succeeds");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("wsgate.v1"),
        "the server chose wsgate.v1"
    );
    V1Client {
        ws,
        next_id: 1,
        inbox: VecDeque::new(),
    }
}

impl V1Client {
    /// Sends a raw text frame.
    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next JSON message from the server (pings skipped); panics on anything else.
    pub async fn read(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message within the wait limit")
                .expect("the connection is still open")
                .expect("no protocol error");
            match m {
                Message::Text(t) => {
                    return serde_json::from_str(&t).expect("the server sends JSON");
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a JSON text frame, got {other:?}"),
            }
        }
    }

    /// Reads until the reply to `id`, keeping everything else in `inbox`.
    pub async fn reply(&mut self, id: u64) -> Value {
        loop {
            let v = self.read().await;
            if v["id"] == json!(id)
                && matches!(
                    v["type"].as_str(),
                    Some("ok" | "error" | "history" | "presence")
                )
            {
                return v;
            }
            if v["id"].is_null() && v["type"] == "error" {
                panic!("an error reply without id while waiting for {id}: {v}");
            }
            self.inbox.push_back(v);
        }
    }

    /// Sends `cmd` with a fresh id and returns the reply.
    pub async fn command(&mut self, mut cmd: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        cmd["id"] = json!(id);
        self.send_raw(&cmd.to_string()).await;
        self.reply(id).await
    }

    /// The next publication or event (from `inbox` first).
    pub async fn next_event(&mut self) -> Value {
        if let Some(v) = self.inbox.pop_front() {
            return v;
        }
        self.read().await
    }

    /// Subscribes; panics unless the reply is `ok`.
    pub async fn subscribe(&mut self, group: &str) -> Value {
        let r = self
            .command(json!({ "type": "subscribe", "group": group }))
            .await;
        assert_eq!(r["type"], "ok", "{r}");
        r
    }
}
