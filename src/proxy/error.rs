//! Why a request could not be proxied, and the status and sentence the client gets for it.

use std::time::Duration;

use http::{Response, StatusCode};

use crate::reply::{Body, text};

/// Why a request could not be proxied. Each variant maps to one status in [`Error::status`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "every server of upstream {upstream:?} is down (failed recently or failed its health check); retry shortly, or check the servers"
    )]
    NoServer { upstream: String },
    #[error(
        "cannot connect to upstream {upstream:?} server {server}: {source}; is the server running and listening there?"
    )]
    Connect {
        upstream: String,
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "upstream {upstream:?} server {server} did not accept the connection within {after:?} (connect_timeout)"
    )]
    ConnectTimeout {
        upstream: String,
        server: String,
        after: Duration,
    },
    #[error(
        "upstream {upstream:?} server {server} sent no response head within {after:?} (read_timeout)"
    )]
    ResponseTimeout {
        upstream: String,
        server: String,
        after: Duration,
    },
    #[error("upstream {upstream:?} server {server} failed during the exchange: {reason}")]
    Exchange {
        upstream: String,
        server: String,
        reason: String,
    },
    #[error("upstream {upstream:?} server {server} over TLS (name {sni:?}): {failure}")]
    Tls {
        upstream: String,
        server: String,
        sni: String,
        failure: Box<super::tls::Failure>,
    },
    #[error("upstream {upstream:?} server {server} answered the WebSocket upgrade wrongly: {what}")]
    BadUpgrade {
        upstream: String,
        server: String,
        what: String,
    },
}

/// A keep-alive pool's error with its cause, for messages.
pub(super) fn describe(e: &hyper_util::client::legacy::Error) -> String {
    match std::error::Error::source(e) {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

impl Error {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NoServer { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::ConnectTimeout { .. } | Error::ResponseTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Error::Connect { .. }
            | Error::Exchange { .. }
            | Error::BadUpgrade { .. }
            | Error::Tls { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Counts and logs the error, and gives the status and short text body the client gets.
    pub fn report(&self, path: &str) -> (StatusCode, String) {
        let status = self.status();
        crate::metrics::METRICS.proxy_errors.inc();
        tracing::warn!(status = status.as_u16(), %path, error = %self, "proxy error");
        let reason = status.canonical_reason().unwrap_or("");
        (status, format!("{} {reason}: {self}\n", status.as_u16()))
    }

    /// The short text response, logged as it is sent.
    pub fn into_response(self, path: &str) -> Response<Body> {
        let (status, body) = self.report(path);
        text(status, body)
    }
}
