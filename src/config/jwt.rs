//! `[jwt]`: who may open WebSockets on hub routes, proven by a signed JSON Web Token. Absent:
//! hub routes are open to anyone (as the origin rule allows). The key files are read by
//! `auth::Jwt` at start, which is where a bad key is reported.

use serde::Deserialize;

use super::duration::Duration;
use super::secret::Secret;
use super::validate::Seg;

/// `[jwt]`: token checks for hub routes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Jwt {
    /// Shared secret for HS256 tokens. Default: unset.
    pub secret: Option<Secret>,
    /// PEM file with the public key for RS256 (an RSA key) or ES256 (a P-256 key) tokens.
    /// Default: unset.
    pub public_key: Option<String>,
    /// JSON Web Key Set file (`{"keys": [...]}`); a token's `kid` picks the key. Default: unset.
    pub jwks: Option<String>,
    /// Cookie a token may come in (browsers cannot set headers on a WebSocket). Default
    /// "wsgate_token"; "" turns cookies off.
    pub cookie: String,
    /// Query parameter a token may come in (`?token=...`). Default "token"; "" turns it off.
    pub query: String,
    /// Claim holding the group patterns the token allows (`["room:*"]`). Default "groups";
    /// "" stops checking groups (the route alone decides).
    pub groups_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`. Default 0 s.
    pub leeway: Duration,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
}

impl Default for Jwt {
    fn default() -> Self {
        Jwt {
            secret: None,
            public_key: None,
            jwks: None,
            cookie: "wsgate_token".into(),
            query: "token".into(),
            groups_claim: "groups".into(),
            leeway: Duration::from_secs(0),
            issuer: None,
            audience: None,
        }
    }
}

impl Jwt {
    /// Reports what is wrong with this section.
    pub(super) fn check(&self, report: &mut impl FnMut(Vec<Seg>, String)) {
        let at = |k: &str| vec![Seg::Key("jwt".into()), Seg::Key(k.into())];
        if self.secret.is_none() && self.public_key.is_none() && self.jwks.is_none() {
            report(
                vec![Seg::Key("jwt".into())],
                "names no key; set secret (HS256), public_key (a PEM file, RS256/ES256) or jwks (a JWKS file)"
                    .into(),
            );
        }
        if let Some(s) = &self.secret {
            let s = s.expose();
            if s.len() < 16 {
                report(
                    at("secret"),
                    "is shorter than 16 bytes; use a long random secret (e.g. openssl rand -base64 32)"
                        .into(),
                );
            }
        }
        if self.leeway.get().as_secs() > 3600 {
            report(
                at("leeway"),
                format!(
                    "{} is more than 1h; expired tokens would pass for that long",
                    self.leeway
                ),
            );
        }
        for (k, v) in [("cookie", &self.cookie), ("query", &self.query)] {
            if v.chars()
                .any(|c| !(c.is_ascii_alphanumeric() || "_-.".contains(c)))
            {
                report(
                    at(k),
                    format!("{v:?} may hold only letters, digits, '_', '-' and '.'"),
                );
            }
        }
    }
}
