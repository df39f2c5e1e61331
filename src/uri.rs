//! Request-target helpers shared by everything that reads a name out of a URL path.
//!
//! A leaf: no routes, groups or sockets here, only bytes of a path.

/// Decodes `%XX` escapes; malformed escapes and invalid UTF-8 are kept as they are.
pub fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// Decodes a name from a URL segment strictly (a group name's one canonical form is the text
/// its escapes spell): a malformed escape, or escapes that are not UTF-8, are an error saying
/// so, never kept as written (which would make `%FF` and `%25FF` one name).
pub fn decode_name(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                return Err(format!(
                    "malformed percent escape at byte {i} of the name; a % must be followed by two hex digits (write % itself as %25)"
                ));
            };
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| {
        "the name's percent escapes are not UTF-8; names are text: encode them as UTF-8 before percent-encoding".to_string()
    })
}

/// A request path in the one form wsgate matches and forwards (RFC 3986 §6.2.2): percent
/// escapes of unreserved characters decoded, other escapes in upper case, `.` and `..`
/// segments removed. Returns the path unchanged (borrowed) when it already is in that form.
///
/// # Errors
/// A sentence for what cannot be normalised safely: a malformed escape, an encoded `/`, `\`
/// or NUL (an upstream that decodes them would see other segments than wsgate matched), a raw
/// `\`, or `..` climbing above the root.
pub fn normalize_path(path: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    let b = path.as_bytes();
    let suspicious = b.iter().any(|&c| c == b'%' || c == b'\\')
        || path.split('/').any(|seg| seg == "." || seg == "..");
    if !suspicious {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    if !path.is_ascii() {
        // A request-target is ASCII (RFC 9112 §3.2); bytes are copied one by one below.
        return Err("the path holds raw non-ASCII bytes; percent-encode them".into());
    }
    if b.contains(&b'\\') {
        return Err("the path holds a backslash, which some servers take for '/'; send '/' or %5C only where meant".into());
    }
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            decoded.push(b[i] as char);
            i += 1;
            continue;
        }
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        let Some(v) = hex else {
            return Err(format!(
                "malformed percent escape at byte {i}; a % must be followed by two hex digits"
            ));
        };
        match v {
            b'/' | b'\\' | 0 => {
                return Err(format!(
                    "the path holds %{v:02X} (an encoded '/', '\\' or NUL), which cannot be normalised safely"
                ));
            }
            c if c.is_ascii_alphanumeric() || b"-._~".contains(&c) => decoded.push(c as char),
            c => decoded.push_str(&format!("%{c:02X}")),
        }
        i += 3;
    }
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = decoded.split('/').collect();
    let last = segs.len() - 1;
    for (n, seg) in segs.iter().enumerate().skip(1) {
        match *seg {
            "." => {
                if n == last {
                    out.push("");
                }
            }
            ".." => {
                if out.pop().is_none() {
                    return Err("the path climbs above the root with '..'".into());
                }
                if n == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Ok(std::borrow::Cow::Owned(format!("/{}", out.join("/"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_as_rfc3986_says() {
        let n = |p: &str| normalize_path(p).map(|c| c.into_owned());
        assert_eq!(n("/app/x").unwrap(), "/app/x");
        assert!(matches!(
            normalize_path("/app/x"),
            Ok(std::borrow::Cow::Borrowed(_))
        ));
        assert_eq!(n("/app/../secret").unwrap(), "/secret");
        assert_eq!(n("/app/%2e%2e/secret").unwrap(), "/secret");
        assert_eq!(n("/app/%2E./secret").unwrap(), "/secret");
        assert_eq!(n("/app/./x/").unwrap(), "/app/x/");
        assert_eq!(n("/app/x/..").unwrap(), "/app/");
        assert_eq!(n("/app/%7euser%41").unwrap(), "/app/~userA");
        assert_eq!(n("/app/a%c3%a9").unwrap(), "/app/a%C3%A9");
        assert_eq!(n("/app/a%20b").unwrap(), "/app/a%20b");
        assert!(n("/app/..%2fsecret").is_err());
        assert!(n("/app/%5c..%5csecret").is_err());
        assert!(n("/app\\..\\secret").is_err());
        assert!(n("/app/%00").is_err());
        assert!(n("/app/%zz").is_err());
        assert!(n("/app/%2").is_err());
        assert!(n("/../etc/passwd").is_err());
    }

    #[test]
    fn names_decode_strictly_to_one_canonical_text() {
        assert_eq!(decode_name("room:caf%C3%A9").unwrap(), "room:café");
        assert_eq!(decode_name("room:%25FF").unwrap(), "room:%FF");
        assert!(decode_name("room:%FF").unwrap_err().contains("not UTF-8"));
        assert!(decode_name("room:%zz").unwrap_err().contains("malformed"));
        assert!(decode_name("room:%2").unwrap_err().contains("malformed"));
    }

    #[test]
    fn escapes_are_decoded_and_malformed_ones_kept() {
        assert_eq!(percent_decode("caf%C3%A9"), "café");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41%zz"), "A%zz");
        assert_eq!(
            percent_decode("%FF"),
            "%FF",
            "invalid UTF-8 stays as written"
        );
    }
}
