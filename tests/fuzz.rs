//! Mutation fuzzing on the stable toolchain, bounded in time: cargo-fuzz needs nightly (not
//! installed here) and `afl`/`bolero` need their own toolchains or instrumented builds, so this
//! is a small structure-aware mutator (bit flips, byte inserts and deletes, splices of
//! dictionary tokens, chunk duplication) driven by a seeded xorshift generator, over seeds in
//! `fuzz/corpus/<target>/`. Each target asserts properties, not just "no panic".
//!
//! `cargo test --test fuzz` runs every target briefly (`FUZZ_SECONDS`, default 1 s each);
//! `scripts/fuzz` runs them for 60 s each in release mode. A failing input is printed (hex) with
//! the seed that found it, to be kept as a regression case in `fuzz/corpus/<target>/`.

use std::path::Path;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use wsgate::ws::frame::{self, Decoder, Event};

/// xorshift64*: fast, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const DICT: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b":",
    b" ",
    b"\0",
    b"%",
    b"%2e",
    b"%2f",
    b"..",
    b"/",
    b"\\",
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Version: 13",
    b"HTTP/1.0",
    b"HTTP/1.1",
    b"HTTP/1.2",
    b"GET ",
    b"\xff\xfe",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"=",
    b"\x7f",
    b"\x81\xff",
    b"\x88\x80",
    b"\x89",
    b"\xe2\x80\xae",
    b"18446744073709551615",
    b"-1",
    b"999999999h",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(input.len() + 1);
                input.insert(i, rng.next() as u8);
            }
            2 if !input.is_empty() => {
                let i = rng.below(input.len());
                let n = rng.below(8).min(input.len() - i);
                input.drain(i..i + n);
            }
            3 => {
                let i = rng.below(input.len() + 1);
                let t = DICT[rng.below(DICT.len())];
                input.splice(i..i, t.iter().copied());
            }
            4 if !input.is_empty() && input.len() < 64 * 1024 => {
                let i = rng.below(input.len());
                let n = rng.below(64).min(input.len() - i);
                let chunk = input[i..i + n].to_vec();
                let at = rng.below(input.len() + 1);
                input.splice(at..at, chunk);
            }
            _ => {
                let i = rng.below(input.len() + 1);
                input.truncate(i);
            }
        }
    }
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; the seeds live there", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out.sort();
    out
}

/// Runs `check` on mutations of the target's seeds for `FUZZ_SECONDS` (default 1); panics
/// with the failing input when a check panics.
fn fuzz(target: &str, check: impl Fn(&[u8])) {
    let secs: f64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let corpus = seeds(target);
    for s in &corpus {
        check(s);
    }
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let mut input = corpus[rng.below(corpus.len())].clone();
        mutate(&mut rng, &mut input);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)));
        if r.is_err() {
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            panic!("{target}: failing input after {runs} runs (FUZZ_SEED={seed}): {hex}");
        }
        runs += 1;
    }
    eprintln!("{target}: {runs} mutated inputs, no failure");
}

#[test]
fn fuzz_frame_decoder() {
    fuzz("frame", |input| {
        // Fed whole and in two pieces, the decoder must agree, never panic, and never hand out a
        // message over its limit or a text message that is not UTF-8.
        let run = |split: usize| {
            let mut d = Decoder::new(1024);
            let mut events = Vec::new();
            let mut buf = input.to_vec();
            let (a, b) = buf.split_at_mut(split.min(input.len()));
            let mut on = |e: Event| events.push(format!("{e:?}"));
            let r = d.feed(a, &mut on).and_then(|()| d.feed(b, &mut on));
            (events, r.map_err(|e| e.code))
        };
        let whole = run(input.len());
        let split = run(input.len() / 2);
        assert_eq!(whole, split, "splitting the bytes changed what was decoded");
        let mut d = Decoder::new(1024);
        let mut buf = input.to_vec();
        let _ = d.feed(&mut buf, &mut |e| {
            if let Event::Message(m) = e {
                assert!(
                    m.payload().len() <= 1024,
                    "a message over max_message_bytes"
                );
                if m.text {
                    assert!(
                        std::str::from_utf8(m.payload()).is_ok(),
                        "text that is not UTF-8"
                    );
                }
            }
        });
    });
}

#[test]
fn fuzz_tunnel_frame_header_parser() {
    fuzz("frame", |input| {
        // The proxy tunnel reads headers with parse_header as frames pass: a header it accepts
        // must fit in what it was given and announce a sane length.
        if let Some(h) = frame::parse_header(input) {
            assert!(
                h.size >= 2 && h.size <= 14 && h.size <= input.len(),
                "{h:?}"
            );
        }
    });
}

#[test]
fn fuzz_request_head_and_handshake() {
    fuzz("handshake", |input| {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hs);
        let Ok(httparse::Status::Complete(_)) = req.parse(input) else {
            return;
        };
        let method = req
            .method
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .unwrap_or(Method::GET);
        let version = if req.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let mut headers = HeaderMap::new();
        for h in req.headers.iter() {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_bytes(h.value),
            ) {
                headers.append(n, v);
            }
        }
        let protocols = vec!["wsgate.v1".to_string(), "chat".to_string()];
        match wsgate::ws::handshake::check(&method, version, &headers, &protocols) {
            Ok(a) => {
                // Accepted only what RFC 6455 §4.2.1 allows, and only a protocol offered.
                assert_eq!(method, Method::GET);
                assert!(version >= Version::HTTP_11);
                if let Some(p) = &a.protocol {
                    assert!(
                        protocols.contains(p),
                        "chose {p:?}, which the route does not speak"
                    );
                }
            }
            Err(e) => {
                // Every refusal explains itself.
                assert!(e.status().as_u16() >= 400);
                assert!(!e.body("/x").trim().is_empty());
            }
        }
        // Whatever path it names: normalisation is idempotent and never leaves a dot segment.
        if let Some(p) = req.path
            && let Ok(n) = wsgate::uri::normalize_path(p.split('?').next().unwrap_or(""))
            && p.starts_with('/')
        {
            assert!(!n.split('/').any(|s| s == ".." || s == "."), "{n}");
            assert_eq!(wsgate::uri::normalize_path(&n).unwrap(), n);
        }
    });
}

#[test]
fn fuzz_config_parsing() {
    fuzz("config", |input| {
        let Ok(text) = std::str::from_utf8(input) else {
            return;
        };
        // Never a panic; every refusal names where it is.
        if let Err(e) = wsgate::config::load_str("fuzz.toml", text, &[]) {
            for p in &e.problems {
                assert!(p.to_string().starts_with("fuzz.toml"), "{p}");
                assert!(!p.message.is_empty());
            }
        }
    });
}

#[test]
fn fuzz_v1_commands_and_jwt() {
    // The v1 command parser is reached through a session; its inputs are JSON texts, and the
    // JWT verifier is the part of `refresh` that reads attacker bytes: fuzz that directly.
    let jwt = wsgate::auth::Jwt::new(&wsgate::config::Jwt {
        secret: Some(wsgate::config::Secret::new(
            "a-test-secret-of-32-bytes-length",
        )),
        ..Default::default()
    })
    .unwrap();
    fuzz("v1", |input| {
        let text = String::from_utf8_lossy(input);
        let _ = serde_json::from_str::<serde_json::Value>(&text);
        // Without the key no mutation can make a token say anything else than the seed's.
        if let Ok(c) = jwt.verify(&text) {
            assert_eq!(&*c.sub, "fuzz", "a forged token verified: {c:?}");
            assert_eq!(c.groups, Some(vec!["room:*".to_string()]), "{c:?}");
        }
    });
}
