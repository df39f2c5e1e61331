"""A stdlib-only client for wsgate's HTTP API and hook signatures.

    from wsgate_client import Client, verify_signature

    wsgate = Client("http://127.0.0.1:8080")
    wsgate.publish("room:123", "正在打开数据...")      # text
    wsgate.publish("room:123", {"percent": 40})        # JSON
    wsgate.send("1.17", "only for you")                # one connection
    wsgate.disconnect("1.17", code=4000, reason="bye")

Every call raises WsgateError when wsgate cannot be reached or refuses the request; nothing is
swallowed. verify_signature() checks the Wsgate-Signature header of a hook request.
"""

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["Client", "WsgateError", "SignatureError", "verify_signature", "sign"]


class WsgateError(Exception):
    """wsgate refused a request (status is its HTTP status) or could not be reached (status 0)."""

    def __init__(self, status, message):
        super().__init__(f"wsgate: {status}: {message}" if status else f"wsgate: {message}")
        self.status = status
        self.message = message


class SignatureError(Exception):
    """A hook request's Wsgate-Signature is missing, malformed, wrong or too old."""


class Client:
    """wsgate's HTTP API at base_url (e.g. "http://127.0.0.1:8080"), with api.token if set."""

    def __init__(self, base_url="http://127.0.0.1:8080", token=None, timeout=5.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def publish(self, group, data):
        """Publishes data to every member of group: str as text, bytes as binary, anything
        else as JSON. Returns the number of connections on this node that got it."""
        body, ctype = _encode(data)
        path = "/api/groups/" + urllib.parse.quote(group, safe="") + "/messages"
        return self._request("POST", path, body, ctype)["recipients"]

    def send(self, conn_id, data):
        """Sends data to one connection (its id as hooks and presence give it)."""
        body, ctype = _encode(data)
        path = "/api/connections/" + urllib.parse.quote(conn_id, safe="") + "/messages"
        self._request("POST", path, body, ctype)

    def disconnect(self, conn_id, code=1000, reason=""):
        """Closes one connection with a close code and reason."""
        query = urllib.parse.urlencode({"code": code, "reason": reason})
        path = "/api/connections/" + urllib.parse.quote(conn_id, safe="") + "?" + query
        self._request("DELETE", path, None, None)

    def presence(self, group):
        """The connections in group: a list of {"id", "user", "info"}."""
        path = "/api/groups/" + urllib.parse.quote(group, safe="") + "/presence"
        return self._request("GET", path, None, None)["connections"]

    def _request(self, method, path, body, ctype):
        req = urllib.request.Request(self.base_url + path, data=body, method=method)
        if ctype:
            req.add_header("Content-Type", ctype)
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", "replace").strip() or e.reason
            raise WsgateError(e.code, message) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise WsgateError(0, f"{self.base_url} could not be reached ({reason}); is wsgate running?") from e
        try:
            return json.loads(raw)
        except ValueError:
            raise WsgateError(0, f"{method} {path} answered something that is not JSON: {raw[:200]!r}") from None


def _encode(data):
    if isinstance(data, str):
        return data.encode("utf-8"), "text/plain; charset=utf-8"
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), "application/octet-stream"
    return json.dumps(data, ensure_ascii=False).encode("utf-8"), "application/json"


def sign(secret, body, t=None):
    """The Wsgate-Signature value wsgate sends for body (bytes) at unix time t."""
    t = int(time.time()) if t is None else int(t)
    mac = hmac.new(_bytes(secret), str(t).encode() + b"." + bytes(body), hashlib.sha256)
    return f"t={t},v1={mac.hexdigest()}"


def verify_signature(secret, header, body, tolerance=300, now=None):
    """Checks a hook request: header is its Wsgate-Signature value, body its raw bytes.
    Raises SignatureError unless the MAC matches and t is within tolerance seconds of now."""
    if not header:
        raise SignatureError("no Wsgate-Signature header; set hooks.secret in wsgate's config")
    fields = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    if "t" not in fields or "v1" not in fields:
        raise SignatureError(f"malformed Wsgate-Signature {header!r}; expected t=<unix>,v1=<hex>")
    try:
        t = int(fields["t"])
    except ValueError:
        raise SignatureError(f"t={fields['t']!r} is not a unix time") from None
    want = sign(secret, body, t).split("v1=", 1)[1]
    if not hmac.compare_digest(want, fields["v1"]):
        raise SignatureError("the signature does not match: another secret, or the body was changed")
    now = time.time() if now is None else now
    if abs(now - t) > tolerance:
        raise SignatureError(f"the request was signed {int(now - t)} s ago, more than {tolerance} s: a replay?")


def _bytes(s):
    return s.encode("utf-8") if isinstance(s, str) else bytes(s)
