//! Request signing: `Wsgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
//! with `hooks.secret`, so a backend can tell a hook request came from wsgate and is fresh
//! (it checks the MAC, then that `t` is recent, which stops replays of an old request).

use ring::hmac;

/// The signature header's name.
pub const HEADER: &str = "wsgate-signature";

/// The header value for `body` signed at unix time `t` with `key`.
pub fn signature(key: &hmac::Key, t: u64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    format!("t={t},v1={}", hex(tag.as_ref()))
}

/// The HMAC-SHA256 key for `secret`.
pub fn key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    #[test]
    fn the_mac_is_hmac_sha256_of_time_dot_body() {
        let k = key("Jefe");
        let tag = hmac::sign(&k, b"what do ya want for nothing?");
        assert_eq!(
            hex(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let by_parts = signature(&k, 1_700_000_000, b"{}");
        let whole = hmac::sign(&k, b"1700000000.{}");
        assert_eq!(by_parts, format!("t=1700000000,v1={}", hex(whole.as_ref())));
    }
}
