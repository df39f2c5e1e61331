//! Close codes (RFC 6455 §7.4 and the IANA registry): which ones wsgate sends, and when.
//!
//! | code | sent when | should the client reconnect? |
//! |------|-----------|------------------------------|
//! | 1000 | answering a client's Close that carried no code | no: the client asked |
//! | 1001 | the server is shutting down (SIGTERM/SIGINT) | yes, with backoff |
//! | 1002 | the client broke the protocol (unmasked frame, bad opcode, bad fragmentation, ...) | fix the client first |
//! | 1007 | a text message (or Close reason) was not valid UTF-8 | fix the client first |
//! | 1009 | a message exceeded `websocket.max_message_bytes` | only after sending smaller messages |
//! | 1011 | nothing arrived within `websocket.pong_timeout` after a Ping | yes, with backoff |
//! | 1013 | the client read too slowly and its queue passed `websocket.send_queue_bytes` | yes, with backoff |
//!
//! A Close the client sends is answered with the same code, as Autobahn expects. Closes that
//! wsgate starts on its own have a [`CloseReason`]; from the moment one is due, the peer has
//! `websocket.close_timeout` to take our Close and answer it, or the connection is dropped (reset
//! when our Close could not even be written), so a client that stops reading cannot hold its slot.

/// A WebSocket close status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// Used by the proxy when the upstream is lost mid-tunnel.
    pub const BAD_GATEWAY: CloseCode = CloseCode(1014);
}

/// A protocol failure: the close code to send and a reason for the peer and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: CloseCode,
    pub reason: String,
}

impl ProtocolError {
    pub fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        ProtocolError {
            code,
            reason: reason.into(),
        }
    }
}

/// Why wsgate closes a connection on its own initiative (neither answering the peer's Close nor
/// failing the connection for a protocol error). Sessions and proxy tunnels map each reason to
/// their own frames; [`CloseReason::code`] and [`CloseReason::text`] are a session's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The server is shutting down: 1001; queued messages go out first.
    Shutdown,
    /// Nothing arrived within `pong_timeout` after a Ping: 1011; the queue is dropped and the
    /// peer's Close is not waited for (it is not answering).
    PongTimeout,
    /// The send queue passed `send_queue_bytes`: 1013; the queue is dropped.
    SlowConsumer,
    /// Closed through the API (`DELETE /api/connections/{id}`) with this code and reason;
    /// queued messages go out first.
    Disconnected {
        code: u16,
        reason: std::sync::Arc<str>,
    },
}

impl CloseReason {
    /// The code a session sends.
    pub fn code(&self) -> CloseCode {
        match self {
            CloseReason::Shutdown => CloseCode::GOING_AWAY,
            CloseReason::PongTimeout => CloseCode::INTERNAL_ERROR,
            CloseReason::SlowConsumer => CloseCode::TRY_AGAIN_LATER,
            CloseReason::Disconnected { code, .. } => CloseCode(*code),
        }
    }

    /// The reason text a session sends.
    pub fn text(&self) -> &str {
        match self {
            CloseReason::Shutdown => "server shutting down",
            CloseReason::PongTimeout => "pong timeout: nothing received after a ping",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Disconnected { reason, .. } => reason,
        }
    }

    /// Whether messages still queued are dropped rather than delivered before the Close.
    pub fn discards_queue(&self) -> bool {
        matches!(self, CloseReason::PongTimeout | CloseReason::SlowConsumer)
    }

    /// Whether the peer gets time to answer our Close (a peer that stopped answering does not).
    pub fn waits_for_peer(&self) -> bool {
        !matches!(self, CloseReason::PongTimeout)
    }
}

/// Whether a peer may send `code` in a Close frame (§7.4.1, §7.4.2 and the IANA registry).
pub fn is_valid_received(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses a Close payload into its code and reason.
///
/// # Errors
/// 1002 for a 1-byte payload or a code that may not be sent, 1007 for a reason that is not UTF-8.
pub fn parse_payload(payload: &[u8]) -> Result<(Option<u16>, String), ProtocolError> {
    match payload.len() {
        0 => Ok((None, String::new())),
        1 => Err(ProtocolError::new(
            CloseCode::PROTOCOL_ERROR,
            "close frame with a 1-byte payload",
        )),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_received(code) {
                return Err(ProtocolError::new(
                    CloseCode::PROTOCOL_ERROR,
                    format!("close code {code} may not be sent"),
                ));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| {
                ProtocolError::new(
                    CloseCode::INVALID_PAYLOAD,
                    "close reason is not valid UTF-8",
                )
            })?;
            Ok((Some(code), reason.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_codes_match_autobahn_7_7_and_7_9() {
        for c in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(is_valid_received(c), "{c}");
        }
        for c in [0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999, 5000] {
            assert!(!is_valid_received(c), "{c}");
        }
    }

    #[test]
    fn parses_payloads() {
        assert_eq!(parse_payload(&[]).unwrap(), (None, String::new()));
        assert_eq!(
            parse_payload(&[3, 232, b'o', b'k']).unwrap(),
            (Some(1000), "ok".into())
        );
        assert_eq!(
            parse_payload(&[3]).unwrap_err().code,
            CloseCode::PROTOCOL_ERROR
        );
        assert_eq!(
            parse_payload(&[3, 232, 0xFF]).unwrap_err().code,
            CloseCode::INVALID_PAYLOAD
        );
    }
}
