//! JSON Web Tokens for hub routes (`[jwt]`): HS256 with a shared secret, RS256 and ES256 with
//! a public key from a PEM file or a JWKS file. A token comes in `Authorization: Bearer`, a
//! cookie or `?token=` (browsers cannot set headers on a WebSocket) and carries `sub` (the
//! user, shown in presence), `exp`, and the group patterns it allows (`groups`, `*` standing
//! for any text).
//!
//! [`Grant`] is what a connection keeps: its user, its groups and its expiry, which a
//! `wsgate.v1` `refresh` command moves on with a newer token for the same user.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::config;

/// Why a token was refused, or could not be set up from the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error(
        "no token: send one in Authorization: Bearer <token>{}{}",
        .cookie.as_deref().map(|c| format!(", the cookie {c}")).unwrap_or_default(),
        .query.as_deref().map(|q| format!(" or ?{q}=<token>")).unwrap_or_default()
    )]
    Missing {
        cookie: Option<String>,
        query: Option<String>,
    },
    #[error("token expired at {exp} (unix time); get a new one")]
    Expired { exp: u64 },
    #[error(
        "bad signature: the token was not signed with a key wsgate has ([jwt] secret, public_key or jwks)"
    )]
    BadSignature,
    #[error("the token is signed with {0}; wsgate accepts {1} with the keys configured in [jwt]")]
    Algorithm(String, String),
    #[error("the token names key id {0:?}, which the JWKS file ([jwt] jwks) does not hold")]
    UnknownKey(String),
    #[error("the token is malformed ({0}); a JWT is three base64url parts joined by dots")]
    Malformed(String),
    #[error("the token lacks the {0} claim, which wsgate requires")]
    MissingClaim(String),
    #[error("the token is not valid yet (nbf)")]
    NotYet,
    #[error("the token's iss or aud is not the one [jwt] issuer/audience expects")]
    WrongIssuer,
    #[error("group {group:?} not allowed: the token allows {allowed}")]
    GroupNotAllowed { group: String, allowed: String },
    #[error("a refresh must carry a token for the same user ({0:?})")]
    OtherUser(String),
    #[error("[jwt] {0}")]
    Config(String),
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sub: Arc<str>,
    /// Unix seconds.
    pub exp: u64,
    /// Allowed group patterns; `None` when `groups_claim` is off (no check).
    pub groups: Option<Vec<String>>,
}

impl Claims {
    /// Whether the token lets its holder into `group`.
    pub fn allows(&self, group: &str) -> bool {
        self.groups
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| glob(p, group)))
    }

    /// Refuses `group` unless allowed.
    ///
    /// # Errors
    /// [`JwtError::GroupNotAllowed`] naming what the token allows.
    pub fn check_group(&self, group: &str) -> Result<(), JwtError> {
        if self.allows(group) {
            return Ok(());
        }
        let allowed = match self.groups.as_deref() {
            Some([]) | None => "no group".to_string(),
            Some(ps) => ps
                .iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        Err(JwtError::GroupNotAllowed {
            group: group.into(),
            allowed,
        })
    }
}

/// `*` matches any text (at least one character); everything else is literal.
fn glob(pattern: &str, s: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == s;
    };
    let Some(s) = s.strip_prefix(head) else {
        return false;
    };
    // The star takes at least one character, then the rest of the pattern matches somewhere.
    (1..=s.len())
        .filter(|&i| s.is_char_boundary(i))
        .any(|i| glob(rest, &s[i..]))
}

/// The verifier built from `[jwt]`.
pub struct Jwt {
    hs: Option<DecodingKey>,
    rs: Option<DecodingKey>,
    es: Option<DecodingKey>,
    jwks: Vec<(Option<String>, Algorithm, DecodingKey)>,
    cfg: config::Jwt,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("hs256", &self.hs.is_some())
            .field("rs256", &self.rs.is_some())
            .field("es256", &self.es.is_some())
            .field("jwks", &self.jwks.len())
            .finish()
    }
}

impl Jwt {
    /// Reads the keys `cfg` names.
    ///
    /// # Errors
    /// A key file that cannot be read or holds no usable key, named with what to do.
    pub fn new(cfg: &config::Jwt) -> Result<Self, JwtError> {
        let hs = cfg
            .secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.expose().as_bytes()));
        let (mut rs, mut es) = (None, None);
        if let Some(path) = &cfg.public_key {
            let pem = std::fs::read(path).map_err(|e| {
                JwtError::Config(format!(
                    "public_key: cannot read {path}: {e}; check the path"
                ))
            })?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                rs = Some(k);
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                es = Some(k);
            } else {
                return Err(JwtError::Config(format!(
                    "public_key: {path} holds no RSA or EC public key in PEM (-----BEGIN PUBLIC KEY-----); export the public half of the signing key"
                )));
            }
        }
        let mut jwks = Vec::new();
        if let Some(path) = &cfg.jwks {
            let text = std::fs::read(path).map_err(|e| {
                JwtError::Config(format!("jwks: cannot read {path}: {e}; check the path"))
            })?;
            let set: JwkSet = serde_json::from_slice(&text).map_err(|e| {
                JwtError::Config(format!(
                    "jwks: {path} is not a JWK set ({e}); expected {{\"keys\": [...]}}"
                ))
            })?;
            for (i, k) in set.keys.iter().enumerate() {
                let alg = match k.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
                    _ => continue,
                };
                let key = DecodingKey::from_jwk(k).map_err(|e| {
                    JwtError::Config(format!("jwks: key {i} in {path} is not usable: {e}"))
                })?;
                jwks.push((k.common.key_id.clone(), alg, key));
            }
            if jwks.is_empty() {
                return Err(JwtError::Config(format!(
                    "jwks: {path} holds no RSA, EC or symmetric key"
                )));
            }
        }
        Ok(Jwt {
            hs,
            rs,
            es,
            jwks,
            cfg: cfg.clone(),
        })
    }

    /// The token a handshake carries: `Authorization: Bearer`, then the cookie, then the query.
    pub fn token_from<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<String> {
        if let Some(v) = headers.get(http::header::AUTHORIZATION)
            && let Ok(v) = v.to_str()
            && let Some((scheme, t)) = v.split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
        {
            return Some(t.trim().to_string());
        }
        if !self.cfg.cookie.is_empty() {
            for v in headers.get_all(http::header::COOKIE) {
                let Ok(v) = v.to_str() else { continue };
                for pair in v.split(';') {
                    if let Some((n, t)) = pair.trim().split_once('=')
                        && n == self.cfg.cookie
                    {
                        return Some(t.trim().to_string());
                    }
                }
            }
        }
        if !self.cfg.query.is_empty() {
            for pair in query.unwrap_or_default().split('&') {
                if let Some((n, t)) = pair.split_once('=')
                    && n == self.cfg.query
                {
                    return Some(crate::uri::percent_decode(t));
                }
            }
        }
        None
    }

    /// The refusal for a handshake without a token.
    pub fn missing(&self) -> JwtError {
        let on = |s: &str| (!s.is_empty()).then(|| s.to_string());
        JwtError::Missing {
            cookie: on(&self.cfg.cookie),
            query: on(&self.cfg.query),
        }
    }

    /// Checks a token's signature, `exp`, `nbf`, issuer and audience, and reads its claims.
    ///
    /// # Errors
    /// Why the token is refused.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| map_error(&e))?;
        let key = self.key_for(header.alg, header.kid.as_deref())?;
        let mut v = Validation::new(header.alg);
        v.leeway = self.cfg.leeway.get().as_secs();
        v.set_required_spec_claims(&["exp", "sub"]);
        match &self.cfg.audience {
            Some(a) => v.set_audience(&[a]),
            None => v.validate_aud = false,
        }
        if let Some(i) = &self.cfg.issuer {
            v.set_issuer(&[i]);
        }
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<Value>(token, key, &v).map_err(|e| {
            if matches!(e.kind(), ErrorKind::ExpiredSignature) {
                let exp = dangerous::exp(token);
                JwtError::Expired { exp }
            } else {
                map_error(&e)
            }
        })?;
        let c = data.claims;
        let sub = c
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| JwtError::MissingClaim("sub (a non-empty string)".into()))?;
        let exp = c
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| JwtError::MissingClaim("exp (unix seconds)".into()))?;
        let groups = if self.cfg.groups_claim.is_empty() {
            None
        } else {
            let g = c.get(&self.cfg.groups_claim).ok_or_else(|| {
                JwtError::MissingClaim(format!(
                    "{} (the group patterns it allows, e.g. [\"room:*\"])",
                    self.cfg.groups_claim
                ))
            })?;
            Some(match g {
                Value::String(s) => vec![s.clone()],
                Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        JwtError::MissingClaim(format!(
                            "{} as a list of strings",
                            self.cfg.groups_claim
                        ))
                    })?,
                _ => {
                    return Err(JwtError::MissingClaim(format!(
                        "{} as a list of strings",
                        self.cfg.groups_claim
                    )));
                }
            })
        };
        Ok(Claims {
            sub: Arc::from(sub),
            exp,
            groups,
        })
    }

    fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Result<&DecodingKey, JwtError> {
        if !self.jwks.is_empty()
            && let Some(kid) = kid
        {
            return self
                .jwks
                .iter()
                .find(|(k, a, _)| k.as_deref() == Some(kid) && *a == alg)
                .map(|(_, _, key)| key)
                .ok_or_else(|| JwtError::UnknownKey(kid.into()));
        }
        let direct = match alg {
            Algorithm::HS256 => self.hs.as_ref(),
            Algorithm::RS256 => self.rs.as_ref(),
            Algorithm::ES256 => self.es.as_ref(),
            _ => None,
        };
        direct
            .or_else(|| {
                self.jwks
                    .iter()
                    .find(|(_, a, _)| *a == alg)
                    .map(|(_, _, k)| k)
            })
            .ok_or_else(|| JwtError::Algorithm(format!("{alg:?}"), self.accepted()))
    }

    fn accepted(&self) -> String {
        let mut out = Vec::new();
        for (alg, on) in [
            ("HS256", self.hs.is_some()),
            ("RS256", self.rs.is_some()),
            ("ES256", self.es.is_some()),
        ] {
            if on || self.jwks.iter().any(|(_, a, _)| format!("{a:?}") == alg) {
                out.push(alg);
            }
        }
        out.join(", ")
    }
}

fn map_error(e: &jsonwebtoken::errors::Error) -> JwtError {
    match e.kind() {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::ImmatureSignature => JwtError::NotYet,
        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => JwtError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
        ErrorKind::InvalidAlgorithm => {
            JwtError::Algorithm("another algorithm".into(), "HS256, RS256 or ES256".into())
        }
        _ => JwtError::Malformed(e.to_string()),
    }
}

/// Reads `exp` from a token already known to be expired (its signature was checked first).
mod dangerous {
    use base64::Engine;

    pub fn exp(token: &str) -> u64 {
        let payload = token.split('.').nth(1).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("exp").and_then(serde_json::Value::as_u64))
            .unwrap_or(0)
    }
}

/// What a connection admitted with a token keeps: the user, the groups and the expiry; a
/// `refresh` with a newer token for the same user moves them on.
#[derive(Debug)]
pub struct Grant {
    jwt: Arc<Jwt>,
    pub user: Arc<str>,
    expires: AtomicU64,
    groups: RwLock<Option<Vec<String>>>,
}

impl Grant {
    pub fn new(jwt: Arc<Jwt>, claims: Claims) -> Self {
        Grant {
            jwt,
            user: claims.sub,
            expires: AtomicU64::new(claims.exp),
            groups: RwLock::new(claims.groups),
        }
    }

    /// When the token in force expires, in unix seconds.
    pub fn expires(&self) -> u64 {
        self.expires.load(Ordering::Acquire)
    }

    /// Refuses `group` unless the token in force allows it.
    ///
    /// # Errors
    /// [`JwtError::GroupNotAllowed`].
    pub fn check_group(&self, group: &str) -> Result<(), JwtError> {
        let groups = self
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Claims {
            sub: self.user.clone(),
            exp: 0,
            groups,
        }
        .check_group(group)
    }

    /// Takes a newer token for the same user; returns its expiry.
    ///
    /// # Errors
    /// Why the token is refused (the one in force stays).
    pub fn refresh(&self, token: &str) -> Result<u64, JwtError> {
        let c = self.jwt.verify(token)?;
        if c.sub != self.user {
            return Err(JwtError::OtherUser(self.user.to_string()));
        }
        *self.groups.write().unwrap_or_else(|e| e.into_inner()) = c.groups;
        self.expires.store(c.exp, Ordering::Release);
        Ok(c.exp)
    }
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
