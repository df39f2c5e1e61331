//! `[server.http2]`: HTTP/2 next to HTTP/1.1 on `server.listen` (h2 over TLS through ALPN, h2c
//! with prior knowledge on a plain port) and WebSockets over it (RFC 8441 extended CONNECT).

use serde::Deserialize;

use super::validate::{Seg, keys};

/// `[server.http2]`: HTTP/2 on the listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http2 {
    /// Serve HTTP/2: h2 when TLS ALPN picks it, h2c when a plain connection opens with the
    /// HTTP/2 preface. Off: HTTP/1.1 only (and "h2" may not be in `server.tls.alpn`). Default on.
    pub enabled: bool,
    /// Streams (requests and WebSockets) one HTTP/2 connection may have open at once, announced
    /// in SETTINGS_MAX_CONCURRENT_STREAMS; a client opening more gets its stream refused.
    /// Default 256.
    pub max_concurrent_streams: u32,
}

impl Default for Http2 {
    fn default() -> Self {
        Http2 {
            enabled: true,
            max_concurrent_streams: 256,
        }
    }
}

/// Largest `max_concurrent_streams` accepted: every stream can hold a WebSocket's buffers.
const MAX_STREAMS: u32 = 10_000;

impl Http2 {
    /// Reports what is wrong with this section.
    pub(super) fn check(&self, report: &mut impl FnMut(Vec<Seg>, String)) {
        if !(1..=MAX_STREAMS).contains(&self.max_concurrent_streams) {
            report(
                keys(&["server", "http2", "max_concurrent_streams"]),
                format!(
                    "{} is out of range; use 1 to {MAX_STREAMS} (default 256)",
                    self.max_concurrent_streams
                ),
            );
        }
    }
}
