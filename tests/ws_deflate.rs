//! permessage-deflate (RFC 7692) over real sockets: negotiation, publications compressed once
//! for every member that negotiated it, inbound inflation with its limits, and the close codes
//! for a deflate bomb and a malformed stream.

mod support;

use std::net::SocketAddr;

use bytes::BytesMut;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgate::metrics::METRICS;
use wsgate::ws::deflate;
use wsgate::ws::frame::{OpCode, encode_masked, parse_header};

/// The compression counters are process-wide and the tests of this file run in parallel: each
/// test takes its turn, so a count one test reads is its own.
static COUNTERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// A raw WebSocket that offered `extensions` (a header line, or ""); returns the socket and the
/// agreed `Sec-WebSocket-Extensions`, if any.
async fn open(addr: SocketAddr, path: &str, extensions: &str) -> (TcpStream, Option<String>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&upgrade_request(path, extensions))
        .await
        .unwrap();
    let r = read_reply(&mut s).await;
    assert_eq!(r.status, 101, "{r:?}");
    let ext = r.header("sec-websocket-extensions");
    (s, ext)
}

/// A masked client frame with RSV1 set: the first (or only) frame of a compressed message.
fn compressed_frame(opcode: OpCode, fin: bool, body: &[u8]) -> Vec<u8> {
    let mut f = encode_masked(opcode, fin, body, [9, 8, 7, 6]);
    f[0] |= 0x40;
    f
}

fn deflated(payload: &[u8]) -> Vec<u8> {
    deflate::compress(payload, 15, <[u8]>::to_vec).expect("compressible")
}

/// A JSON array of about `n` bytes, as a backend would publish.
fn json(n: usize) -> String {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            "{{\"id\":{i},\"type\":\"progress\",\"percent\":{},\"text\":\"step {i} of the build\"}},",
            i % 100
        ));
        i += 1;
    }
    s.pop();
    s.push(']');
    s
}

/// The next data frame: (RSV1 set, opcode, payload as sent).
async fn next_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> (bool, u8, Vec<u8>) {
    loop {
        if let Some(h) = parse_header(buf) {
            let total = h.size + h.len as usize;
            if buf.len() >= total {
                let payload = buf[h.size..total].to_vec();
                buf.drain(..total);
                if h.opcode_raw == 0x9 || h.opcode_raw == 0xA {
                    continue;
                }
                return (h.rsv & 0x4 != 0, h.opcode_raw, payload);
            }
        }
        let mut chunk = vec![0u8; 65536];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("a frame within 10 s")
            .unwrap();
        assert!(n > 0, "closed before a whole frame");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn inflated(body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    deflate::inflate(body, 1 << 24, &mut out).expect("valid deflate data");
    out.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_is_answered_without_context_takeover_either_way() {
    let _turn = COUNTERS.lock().await;
    let srv = start("").await;
    let (_s, ext) = open(srv.addr, "/room/a/", OFFER).await;
    assert_eq!(
        ext.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let (_s, ext) = open(
        srv.addr,
        "/ws/echo",
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n",
    )
    .await;
    assert!(
        ext.as_deref()
            .is_some_and(|e| e.ends_with("; server_max_window_bits=10")),
        "{ext:?}"
    );
    let (_s, ext) = open(srv.addr, "/ws/echo", "").await;
    assert_eq!(ext, None, "no offer, no extension");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_offer_is_declined_and_rsv1_is_then_a_protocol_error() {
    let _turn = COUNTERS.lock().await;
    let srv = start("").await;
    let (mut s, ext) = open(
        srv.addr,
        "/ws/echo",
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=7\r\n",
    )
    .await;
    assert_eq!(ext, None, "declined, not refused (RFC 7692 section 5)");
    let body = deflated(json(1000).as_bytes());
    s.write_all(&compressed_frame(OpCode::Text, true, &body))
        .await
        .unwrap();
    let (code, reason) = read_until_close(&mut s).await.expect("close");
    assert_eq!(code, 1002, "{reason}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_compression_off_declines_every_offer() {
    let _turn = COUNTERS.lock().await;
    let srv = start(
        "[websocket]\ncompression = \"off\"\n[[route]]\npath = \"/on/{x}\"\ngroup = \"on:{x}\"\ncompression = \"on\"\n",
    )
    .await;
    let (_s, ext) = open(srv.addr, "/ws/echo", OFFER).await;
    assert_eq!(
        ext, None,
        "[websocket] compression = off covers the echo route"
    );
    let (_s, ext) = open(srv.addr, "/on/1", OFFER).await;
    assert!(ext.is_some(), "the route turns it back on");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_is_compressed_once_and_the_same_frame_reaches_every_member() {
    let _turn = COUNTERS.lock().await;
    let srv = start("").await;
    let mut compressing = Vec::new();
    for _ in 0..3 {
        compressing.push(open(srv.addr, "/room/once/", OFFER).await.0);
    }
    let (mut plain, _) = open(srv.addr, "/room/once/", "").await;
    let message = json(4000);
    let before = METRICS.deflate_compressed.get();
    let delivered_before = METRICS.deflate_deliveries.get();
    assert_eq!(publish(srv.addr, "room:once", &message).await, 4);
    let mut frames = Vec::new();
    for s in &mut compressing {
        let (rsv1, op, body) = next_frame(s, &mut Vec::new()).await;
        assert!(rsv1, "compressed");
        assert_eq!(op, 1, "still a text message");
        assert!(body.len() * 4 < message.len(), "{} bytes", body.len());
        assert_eq!(inflated(&body), message.as_bytes());
        frames.push(body);
    }
    assert!(frames.windows(2).all(|w| w[0] == w[1]), "the same bytes");
    assert_eq!(
        METRICS.deflate_compressed.get() - before,
        1,
        "compressed once for three members"
    );
    assert_eq!(METRICS.deflate_deliveries.get() - delivered_before, 3);
    let (rsv1, _, body) = next_frame(&mut plain, &mut Vec::new()).await;
    assert!(
        !rsv1,
        "a member that did not negotiate gets the plain frame"
    );
    assert_eq!(body, message.as_bytes());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_under_the_minimum_size_go_plain() {
    let _turn = COUNTERS.lock().await;
    let srv = start(
        "[websocket]\ncompression_min_bytes = 1000\n[[route]]\npath = \"/room/{x}/\"\ngroup = \"room:{x}\"\n\
[[route]]\npath = \"/all/{x}\"\ngroup = \"all:{x}\"\ncompression_min_bytes = 0\n",
    )
    .await;
    let (mut s, _) = open(srv.addr, "/room/small/", OFFER).await;
    let small = json(600);
    publish(srv.addr, "room:small", &small).await;
    let (rsv1, _, body) = next_frame(&mut s, &mut Vec::new()).await;
    assert!(
        !rsv1,
        "600 bytes is under websocket.compression_min_bytes = 1000"
    );
    assert_eq!(body, small.as_bytes());
    let (mut s, _) = open(srv.addr, "/all/x", OFFER).await;
    publish(srv.addr, "all:x", &small).await;
    let (rsv1, _, body) = next_frame(&mut s, &mut Vec::new()).await;
    assert!(rsv1, "the route's compression_min_bytes = 0 compresses it");
    assert_eq!(inflated(&body), small.as_bytes());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_message_is_inflated_and_echoed_compressed() {
    let _turn = COUNTERS.lock().await;
    let srv = start("").await;
    let (mut s, _) = open(srv.addr, "/ws/echo", OFFER).await;
    let message = json(3000);
    let body = deflated(message.as_bytes());
    // In three fragments: RSV1 on the first only (RFC 7692 section 6.1).
    let third = body.len() / 3;
    let mut wire = compressed_frame(OpCode::Text, false, &body[..third]);
    wire.extend(encode_masked(
        OpCode::Continuation,
        false,
        &body[third..2 * third],
        [1, 1, 1, 1],
    ));
    wire.extend(encode_masked(OpCode::Ping, true, b"p", [2, 2, 2, 2]));
    wire.extend(encode_masked(
        OpCode::Continuation,
        true,
        &body[2 * third..],
        [3, 3, 3, 3],
    ));
    s.write_all(&wire).await.unwrap();
    let (rsv1, op, echoed) = next_frame(&mut s, &mut Vec::new()).await;
    assert!(rsv1);
    assert_eq!(op, 1);
    assert_eq!(inflated(&echoed), message.as_bytes());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_message_is_published_plain_to_members_without_compression() {
    let _turn = COUNTERS.lock().await;
    let srv = start("").await;
    let (mut plain, _) = open(srv.addr, "/room/mix/", "").await;
    let (mut sender, _) = open(srv.addr, "/room/mix/", OFFER).await;
    let message = json(2000);
    sender
        .write_all(&compressed_frame(
            OpCode::Text,
            true,
            &deflated(message.as_bytes()),
        ))
        .await
        .unwrap();
    let (rsv1, _, body) = next_frame(&mut plain, &mut Vec::new()).await;
    assert!(!rsv1);
    assert_eq!(body, message.as_bytes());
    let (rsv1, _, body) = next_frame(&mut sender, &mut Vec::new()).await;
    assert!(
        rsv1,
        "the sender negotiated it and gets its message back compressed"
    );
    assert_eq!(inflated(&body), message.as_bytes());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deflate_bomb_is_closed_with_1009_and_nothing_else_breaks() {
    let _turn = COUNTERS.lock().await;
    let srv = start("[websocket]\nmax_message_bytes = 65536\n").await;
    let (mut s, _) = open(srv.addr, "/ws/echo", OFFER).await;
    // 10 MiB of zeros in about 10 KB: well under the limit on the wire.
    let bomb = deflated(&vec![0u8; 10 << 20]);
    assert!(bomb.len() < 65536);
    s.write_all(&compressed_frame(OpCode::Binary, true, &bomb))
        .await
        .unwrap();
    let (code, reason) = read_until_close(&mut s).await.expect("close");
    assert_eq!(code, 1009);
    assert!(reason.contains("once inflated"), "{reason}");
    // The server is fine: the next client is echoed.
    let (mut s, _) = open(srv.addr, "/ws/echo", OFFER).await;
    let message = json(1000);
    s.write_all(&compressed_frame(
        OpCode::Text,
        true,
        &deflated(message.as_bytes()),
    ))
    .await
    .unwrap();
    let (_, _, body) = next_frame(&mut s, &mut Vec::new()).await;
    assert_eq!(inflated(&body), message.as_bytes());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_compressed_message_is_closed_with_1007() {
    let _turn = COUNTERS.lock().await;
    let srv = start("").await;
    let (mut s, _) = open(srv.addr, "/ws/echo", OFFER).await;
    // 0xff starts a block of the reserved type 11 (RFC 1951 section 3.2.3).
    s.write_all(&compressed_frame(
        OpCode::Text,
        true,
        &[0xff, 0xff, 0xff, 0xff],
    ))
    .await
    .unwrap();
    let (code, reason) = read_until_close(&mut s).await.expect("close");
    assert_eq!(code, 1007);
    assert!(reason.contains("DEFLATE"), "{reason}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsv1_on_a_continuation_or_control_frame_is_closed_with_1002() {
    let _turn = COUNTERS.lock().await;
    let srv = start("").await;
    let (mut s, _) = open(srv.addr, "/ws/echo", OFFER).await;
    let mut wire = encode_masked(OpCode::Text, false, b"a", [1, 2, 3, 4]);
    wire.extend(compressed_frame(OpCode::Continuation, true, b"b"));
    s.write_all(&wire).await.unwrap();
    assert_eq!(read_until_close(&mut s).await.expect("close").0, 1002);
    let (mut s, _) = open(srv.addr, "/ws/echo", OFFER).await;
    s.write_all(&compressed_frame(OpCode::Ping, true, b""))
        .await
        .unwrap();
    assert_eq!(read_until_close(&mut s).await.expect("close").0, 1002);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_client_gets_compressed_envelopes() {
    let _turn = COUNTERS.lock().await;
    let srv = start("").await;
    let (mut s, ext) = open(
        srv.addr,
        "/room/v/",
        &format!("{OFFER}Sec-WebSocket-Protocol: wsgate.v1\r\n"),
    )
    .await;
    assert!(ext.is_some());
    s.write_all(&encode_masked(
        OpCode::Text,
        true,
        br#"{"id":1,"type":"subscribe","group":"room:v"}"#,
        [1, 2, 3, 4],
    ))
    .await
    .unwrap();
    let mut buf = Vec::new();
    let (_, _, reply) = next_frame(&mut s, &mut buf).await;
    assert!(String::from_utf8_lossy(&reply).contains("\"ok\""));
    let message = json(2000);
    publish(srv.addr, "room:v", &message).await;
    let (rsv1, _, body) = next_frame(&mut s, &mut buf).await;
    assert!(rsv1);
    let envelope = String::from_utf8(inflated(&body)).unwrap();
    assert!(
        envelope.starts_with("{\"type\":\"pub\",\"group\":\"room:v\""),
        "{envelope}"
    );
    srv.shutdown().await;
}
