#!/usr/bin/env python3
"""Publications/s one wsgate node pushes through Redis, for bench/redis.sh.

Opens one raw WebSocket member per group (room:0 .. room:N-1) on node B and one member of
room:lone on node C, then sends --requests POST /api/publish requests to node A, each naming
every group (so one request is N publications, which node A pipelines to Redis). Counts what
node B's members receive, reads Redis' CLIENT LIST (which connection holds how many
subscriptions) and the CPU of every process, and prints one JSON line.
Standard library only; every wait is bounded."""

import argparse, base64, json, os, selectors, socket, struct, subprocess, sys, time, urllib.parse

CLK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def bytes_from_redis(pid, redis_port):
    """Bytes a process has received on its TCP connections to Redis (the kernel's tcp_info)."""
    out = subprocess.run(
        ["ss", "-tinpH", "state", "established", f"( dport = :{redis_port} )"],
        capture_output=True, text=True, check=True,
    ).stdout
    total, mine = 0, False
    for line in out.splitlines():
        if not line.startswith(("\t", " ")):
            mine = f"pid={pid}," in line
        elif mine:
            for field in line.split():
                if field.startswith("bytes_received:"):
                    total += int(field.split(":")[1])
    return total


def ws_connect(url):
    u = urllib.parse.urlsplit(url)
    s = socket.create_connection((u.hostname, u.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"{url}: closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        status = head.split(b"\r\n", 1)[0].decode()
        raise RuntimeError(f"{url}: {status}")
    s.setblocking(False)
    return s, head.split(b"\r\n\r\n", 1)[1]


class Member:
    """Counts the data frames a server sends; answers pings."""

    def __init__(self, sock, rest):
        self.sock, self.buf, self.messages = sock, bytearray(rest), 0

    def feed(self):
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        if not data:
            raise RuntimeError("a member was disconnected")
        self.buf += data
        while len(self.buf) >= 2:
            op, n, at = self.buf[0] & 0x0F, self.buf[1] & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, at = struct.unpack(">H", self.buf[2:4])[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, at = struct.unpack(">Q", self.buf[2:10])[0], 10
            if len(self.buf) < at + n:
                return
            payload = bytes(self.buf[at : at + n])
            del self.buf[: at + n]
            if op in (1, 2):
                self.messages += 1
            elif op == 9:  # ping: a masked pong with the same payload
                self.sock.setblocking(True)
                self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                self.sock.setblocking(False)
            elif op == 8:
                raise RuntimeError(f"a member was closed: {payload[2:].decode(errors='replace')}")


def client_list(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "CLIENT", "LIST"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
        rows.append(kv)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribe", required=True)
    ap.add_argument("--groups", type=int, required=True)
    ap.add_argument("--lone", required=True)
    ap.add_argument("--publish", required=True)
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--pids", required=True)
    a = ap.parse_args()
    pid_a, pid_b, pid_c, pid_redis = (int(p) for p in a.pids.split(","))

    sel = selectors.DefaultSelector()
    members = []
    for g in range(a.groups):
        m = Member(*ws_connect(f"{a.subscribe}/room/{g}/"))
        members.append(m)
        sel.register(m.sock, selectors.EVENT_READ, m)
    lone = Member(*ws_connect(a.lone))
    sel.register(lone.sock, selectors.EVENT_READ, lone)
    time.sleep(1.0)  # the nodes subscribe in batches after the first local join

    u = urllib.parse.urlsplit(a.publish)
    body = json.dumps({"groups": [f"room:{g}" for g in range(a.groups)], "data": "x" * a.size}).encode()
    head = (
        f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    pub = socket.create_connection((u.hostname, u.port), timeout=30)
    pub_file = pub.makefile("rb")

    def drain(deadline):
        for key, _ in sel.select(timeout=max(0.0, min(0.05, deadline - time.monotonic()))):
            key.data.feed()

    before = {p: cpu_s(p) for p in (pid_a, pid_b, pid_c, pid_redis)}
    lone_read0 = bytes_from_redis(pid_c, a.redis_port)
    b_read0 = bytes_from_redis(pid_b, a.redis_port)
    started = time.monotonic()
    failed = 0
    for _ in range(a.requests):
        pub.sendall(head + body)
        status = pub_file.readline()
        length = 0
        while True:
            line = pub_file.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        answer = pub_file.read(length)
        if not status.startswith(b"HTTP/1.1 200"):
            failed += 1
            print(status.decode().strip(), answer[:200], file=sys.stderr)
        drain(time.monotonic())
    published_s = time.monotonic() - started
    expected = (a.requests - failed) * a.groups
    deadline = time.monotonic() + 30
    while sum(m.messages for m in members) < expected and time.monotonic() < deadline:
        drain(deadline)
    delivered_s = time.monotonic() - started
    after = {p: cpu_s(p) for p in (pid_a, pid_b, pid_c, pid_redis)}
    lone_read = bytes_from_redis(pid_c, a.redis_port) - lone_read0
    b_read = bytes_from_redis(pid_b, a.redis_port) - b_read0
    pubs = a.requests * a.groups
    subs = sorted(
        ((int(c.get("sub", 0)) + int(c.get("ssub", 0)) + int(c.get("psub", 0))) for c in client_list(a.redis_port)),
        reverse=True,
    )
    deliveries = sum(m.messages for m in members)
    report = {
        "ok": failed == 0 and deliveries == expected and lone.messages == 0,
        "requests": a.requests,
        "groups": a.groups,
        "failed_requests": failed,
        "publications_per_s": (pubs - failed * a.groups) / published_s,
        "publish_seconds": published_s,
        "deliveries": deliveries,
        "expected_deliveries": expected,
        "delivered_seconds": delivered_s,
        "redis_cpu_us_per_pub": (after[pid_redis] - before[pid_redis]) * 1e6 / pubs,
        "node_a_cpu_us_per_pub": (after[pid_a] - before[pid_a]) * 1e6 / pubs,
        "node_b_cpu_s": after[pid_b] - before[pid_b],
        "node_c_cpu_s": after[pid_c] - before[pid_c],
        # Redis connections by subscription count, highest first: node B holds one per group,
        # node C one (its lone member's group), node A none.
        "redis_subscriptions_per_connection": [s for s in subs if s > 0],
        "lone_node_subscriptions": next((s for s in subs if 0 < s < a.groups), 0),
        # What each node received from Redis during the run, from its sockets' tcp_info.
        "lone_node_bytes_during_run": lone_read,
        "member_node_bytes_during_run": b_read,
        "lone_member_messages": lone.messages,
    }
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
