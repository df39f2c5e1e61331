"""wsgate_client against a real wsgate (WSGATE_BIN, default target/release/wsgate)."""

import json
import os
import socket
import subprocess
import sys
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..")))

from wsgate_client import Client, SignatureError, WsgateError, sign, verify_signature  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Ws:
    """A minimal WebSocket client (stdlib sockets) that reads text frames."""

    def __init__(self, port, path):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.s.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0], head

    def text(self):
        while True:
            if len(self.buf) >= 2:
                n = self.buf[1] & 0x7F
                at = 2
                if n == 126:
                    n, at = int.from_bytes(self.buf[2:4], "big"), 4
                if len(self.buf) >= at + n:
                    payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
                    return payload.decode()
            self.buf += self.s.recv(4096)

    def close(self):
        self.s.close()


class AgainstWsgate(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        binary = os.environ.get("WSGATE_BIN", os.path.join(REPO, "target", "release", "wsgate"))
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"no wsgate binary at {binary}; build it (cargo build --release) or set WSGATE_BIN")
        cls.port = free_port()
        cls.proc = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{cls.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", cls.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or cls.proc.poll() is not None:
                    cls.proc.kill()
                    raise RuntimeError("wsgate did not start listening within 10 s")
                time.sleep(0.05)
        cls.client = Client(f"http://127.0.0.1:{cls.port}")

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        try:
            cls.proc.wait(10)
        except subprocess.TimeoutExpired:
            cls.proc.kill()

    def test_publish_text_and_json_reach_a_member(self):
        ws = Ws(self.port, "/room/py1/")
        try:
            self.assertEqual(self.client.publish("room:py1", "正在打开数据..."), 1)
            self.assertEqual(self.client.publish("room:py1", {"percent": 40}), 1)
            self.assertEqual(ws.text(), "正在打开数据...")
            self.assertEqual(json.loads(ws.text()), {"percent": 40})
        finally:
            ws.close()

    def test_send_reaches_one_connection_and_disconnect_closes_it(self):
        ws = Ws(self.port, "/room/py2/")
        try:
            conn = self.client.presence("room:py2")[0]["id"]
            self.client.send(conn, "only you")
            self.assertEqual(ws.text(), "only you")
            self.client.disconnect(conn, code=4000, reason="bye")
            # Closing (409) until the Close is answered, gone (404) after: never sent to.
            with self.assertRaises(WsgateError) as e:
                self.client.send(conn, "still there?")
            self.assertIn(e.exception.status, (404, 409))
        finally:
            ws.close()

    def test_refusals_raise_with_wsgates_sentence(self):
        with self.assertRaises(WsgateError) as e:
            self.client.publish("", "x")
        self.assertIn(e.exception.status, (400, 404))
        with self.assertRaises(WsgateError) as e:
            Client(f"http://127.0.0.1:{free_port()}", timeout=2).publish("room:x", "x")
        self.assertEqual(e.exception.status, 0)
        self.assertIn("could not be reached", str(e.exception))


class Signatures(unittest.TestCase):
    def test_a_signature_verifies_and_a_wrong_one_raises(self):
        body = b'{"event":"connect"}'
        header = sign("s3cret", body, t=1_700_000_000)
        verify_signature("s3cret", header, body, now=1_700_000_010)
        with self.assertRaises(SignatureError):
            verify_signature("other", header, body, now=1_700_000_010)
        with self.assertRaises(SignatureError):
            verify_signature("s3cret", header, body + b" ", now=1_700_000_010)
        with self.assertRaises(SignatureError) as e:
            verify_signature("s3cret", header, body, now=1_700_001_000)
        self.assertIn("replay", str(e.exception))
        with self.assertRaises(SignatureError):
            verify_signature("s3cret", None, body)

    def test_the_mac_matches_wsgates_rust_side(self):
        # The same vector as src/hooks/sign.rs: HMAC-SHA256("Jefe", "1700000000.{}").
        import hashlib
        import hmac
        want = hmac.new(b"Jefe", b"1700000000.{}", hashlib.sha256).hexdigest()
        self.assertEqual(sign("Jefe", b"{}", t=1_700_000_000), f"t=1700000000,v1={want}")


if __name__ == "__main__":
    unittest.main()
