//! The `idle` step (`--idle-probe 75s`): hold the upgraded connection silent, as an idle
//! browser tab does (Pings answered with Pongs, no data sent), and report when and how it ended:
//! still open, a Close frame with its code, a FIN without a Close, or an RST; with the server's
//! Pings counted and the likely cause named (a proxy read timeout cuts without a Close frame).
//!
//! Built on [`super::session::Conn`]; knows nothing about HTTP or TLS.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::ws::frame::OpCode;

use super::hops::{Proxy, idle_cut_cause};
use super::report::{Step, ms_since};
use super::session::{Conn, Event, close_payload};

/// Holds the connection silent for `hold`. Returns the step and whether the connection is still
/// open (then the `close` step follows).
pub async fn probe<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    hold: Duration,
    front: Option<Proxy>,
) -> (Step, bool) {
    let start = Instant::now();
    let pings_before = conn.pings;
    let messages_before = conn.messages;
    let deadline = start + hold;
    let ended = loop {
        match conn.next_event(deadline).await {
            // Unsolicited Pongs are heartbeats; they do not end anything.
            Some(Event::Pong(_)) => continue,
            other => break other,
        }
    };
    let after = start.elapsed().as_secs_f64();
    let pings = conn.pings.saturating_sub(pings_before);
    let messages = conn.messages.saturating_sub(messages_before);
    let sent = match (pings, messages) {
        (0, 0) => "the server sent nothing".to_string(),
        (p, 0) => format!("the server sent {p} ping(s)"),
        (p, m) => format!("the server sent {p} ping(s) and {m} message(s)"),
    };
    let mut step = match &ended {
        None => {
            let mut s = Step::pass(
                "idle",
                format!("still open after {after:.1} s of silence from doctor; {sent}"),
            );
            if pings == 0 && messages == 0 {
                s = s.with_hint(
                    "nothing crossed the connection, so any proxy with a read timeout shorter than your \
longest silence will cut it (nginx: 60 s by default); let the server send pings (wsgate: \
websocket.ping_interval) to be safe",
                );
            }
            s
        }
        Some(ev @ Event::Close { code, reason }) => {
            // Answer the Close as a client must (RFC 6455 section 5.5.1).
            let _ = conn
                .send(OpCode::Close, &close_payload(code.unwrap_or(1000), ""))
                .await;
            Step::fail(
                "idle",
                format!("closed with {} after {after:.1} s; {sent}", ev.describe()),
            )
            .with_fact("close_code", *code)
            .with_fact("close_reason", reason.clone())
            .with_hint(close_code_hint(*code))
        }
        Some(ev @ (Event::Fin | Event::Reset)) => {
            let quiet = conn.last_frame.elapsed().as_secs_f64();
            let since = if pings > 0 || messages > 0 {
                format!(" ({quiet:.1} s after the server's last frame)")
            } else {
                String::new()
            };
            let how = if matches!(ev, Event::Fin) {
                "closed"
            } else {
                "reset (TCP RST)"
            };
            Step::fail(
                "idle",
                format!("{how} after {after:.1} s without a Close frame{since}; {sent}"),
            )
            .with_hint(idle_cut_cause(quiet, front))
        }
        Some(ev) => Step::fail(
            "idle",
            format!("after {after:.1} s: {}; {sent}", ev.describe()),
        )
        .with_hint("the server broke the protocol while the connection was idle; check its logs"),
    };
    step = step
        .with_fact("held_s", (hold.as_secs_f64() * 1000.0).round() / 1000.0)
        .with_fact("ended_after_s", (after * 1000.0).round() / 1000.0)
        .with_fact("ended", ended.as_ref().map_or("open", Event::kind))
        .with_fact("server_pings", pings)
        .with_fact("server_messages", messages);
    step.elapsed_ms = ms_since(start);
    (step, ended.is_none())
}

/// What a Close during an idle hold most likely means.
fn close_code_hint(code: Option<u16>) -> String {
    match code {
        Some(1000) => "the server closed an idle connection on purpose: an idle policy in the application; \
raise it or have the client send application messages"
            .into(),
        Some(1001) => "1001 Going Away: the server or a proxy is shutting down or restarting (Caddy sends 1001 \
when its config reloads; wsgate on shutdown), or enforces an idle limit with a Close; if nothing was \
restarting, look for an idle timeout on the server"
            .into(),
        Some(1008) => "1008 Policy Violation: the server's policy ended it (authentication expiry, an idle rule)".into(),
        Some(1011) => "1011: the server hit an error, or (wsgate) a Ping went unanswered; doctor answers every Ping, \
so a hop in between may be eating the Pongs"
            .into(),
        Some(1013) => "1013 Try Again Later: the server is overloaded".into(),
        Some(1014) => "1014 Bad Gateway: a proxy (wsgate) lost its upstream; check the upstream's logs".into(),
        Some(c) if (4000..=4999).contains(&c) => {
            format!("{c} is the application's own code: look it up in the application")
        }
        Some(c) => format!("look up close code {c} in the server's documentation"),
        None => "the server closed without a code; check its logs".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_code_gets_a_reading() {
        assert!(close_code_hint(Some(1001)).starts_with("1001 Going Away"));
        assert!(close_code_hint(Some(4321)).contains("application's own"));
        assert!(close_code_hint(None).contains("without a code"));
    }
}
