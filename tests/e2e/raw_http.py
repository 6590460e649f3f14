"""Raw HTTP clients for the adversarial end-to-end tests.

The SDK clients only send well-formed requests. An attacker does not, so
these helpers put exact bytes on a TLS connection authenticated with a real
SVID (HTTP/1.1), or drive curl for HTTP/2:

    resp = request(gw.port, svid, body, headers=[("Mcp-Session-Id", sid)])
    resp.status, resp.header("mcp-session-id"), resp.json(), resp.messages()
    raw = exchange(gw.port, svid, [attack_bytes, canary_bytes])
    for r in parse_responses(raw): ...
    resp = curl(gw.url, svid, body, headers=[...], http2=True)

`assert_refused` checks the whole refusal contract at once: the HTTP status,
the JSON-RPC error with a correlation id, the deny audit record with that
correlation id and reason, and nothing new in the upstream's request log.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

Headers = Sequence[tuple[str, str]]

ACCEPT = ("Accept", "application/json, text/event-stream")
JSON = ("Content-Type", "application/json")

# A complete stateless 2026-07-28 request and its headers (the gateway's
# "still serving" probe).
PROBE = (
    b'{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{'
    b'"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
    b'"io.modelcontextprotocol/clientCapabilities":{}}}}'
)
PROBE_HEADERS: list[tuple[str, str]] = [
    ("MCP-Protocol-Version", "2026-07-28"),
    ("Mcp-Method", "server/discover"),
]


def tls_context(svid: Any) -> ssl.SSLContext:
    """Client TLS context presenting `svid` (cert, key, bundle), HTTP/1.1 only."""
    ctx = ssl.create_default_context(cafile=str(svid.bundle))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(svid.cert), str(svid.key))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


@dataclass
class Resp:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    http_version: str = "1.1"
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def json(self) -> Any:
        """The body as JSON; an SSE body gives its single JSON-RPC message
        (or the list of them when there are several)."""
        if (self.header("content-type") or "").startswith("text/event-stream"):
            msgs = self.messages()
            return msgs[0] if len(msgs) == 1 else msgs
        return json.loads(self.body)

    def messages(self) -> list[Any]:
        """The JSON-RPC messages of the body: the `data` of each SSE event, or
        the JSON body (an array is flattened)."""
        ctype = self.header("content-type") or ""
        if ctype.startswith("text/event-stream"):
            out = []
            for event in self.body.decode("utf-8").replace("\r\n", "\n").split("\n\n"):
                data = "\n".join(
                    line[5:].lstrip(" ") for line in event.split("\n") if line.startswith("data:")
                )
                if data.strip():
                    out.append(json.loads(data))
            flat = []
            for m in out:
                flat.extend(m if isinstance(m, list) else [m])
            return flat
        if not self.body.strip():
            return []
        parsed = json.loads(self.body)
        return parsed if isinstance(parsed, list) else [parsed]

    def __repr__(self) -> str:  # short, for assertion messages
        return f"Resp({self.status}, {dict(self.headers)!r}, {self.body[:600]!r})"


# --------------------------------------------------------------------------
# Well-formed HTTP/1.1 requests (http.client keeps repeated headers)
# --------------------------------------------------------------------------


def request(
    port: int,
    svid: Any,
    body: bytes = b"",
    headers: Headers = (),
    *,
    method: str = "POST",
    path: str = "/mcp",
    content_type: str | None = "application/json",
    accept: str | None = "application/json, text/event-stream",
    timeout: float = 15.0,
    host: str = "127.0.0.1",
) -> Resp:
    """One HTTP/1.1 request over mTLS with `svid`; reads the whole response.

    `headers` are sent in order, repeats included. Content-Length is set for
    a POST (and for any non-empty body) unless `headers` carries framing."""
    conn = http.client.HTTPSConnection(host, port, context=tls_context(svid), timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", "localhost")
        if content_type is not None and method == "POST":
            conn.putheader("Content-Type", content_type)
        if accept is not None:
            conn.putheader("Accept", accept)
        names = {k.lower() for k, _ in headers}
        for k, v in headers:
            conn.putheader(k, v)
        if (body or method == "POST") and not names & {"content-length", "transfer-encoding"}:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body if body else None)
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, list(r.getheaders()), data)
    finally:
        conn.close()


def post(port: int, svid: Any, body: bytes, headers: Headers = (), **kw: Any) -> Resp:
    return request(port, svid, body, headers, method="POST", **kw)


def probe(port: int, svid: Any) -> Resp:
    """A valid, allowed 2026-07-28 server/discover."""
    return post(port, svid, PROBE, PROBE_HEADERS)


def assert_serving(port: int, svid: Any, gw: Any = None) -> None:
    """The gateway still answers a valid request with a result. With `gw`,
    also waits for that request's audit record: records are written in
    order by one task, so every earlier record is on disk afterwards (a
    barrier before checking that some record is absent)."""
    marker = f"serving-{uuid.uuid4().hex}"
    body = PROBE.replace(b'"id":1', f'"id":"{marker}"'.encode())
    r = post(port, svid, body, PROBE_HEADERS)
    assert r.status == 200, r
    reply = r.json()
    assert reply.get("id") == marker and "result" in reply, r
    if gw is not None:
        gw.wait_audit(lambda rec: rec.get("request_id") == marker)


# --------------------------------------------------------------------------
# Raw bytes on one connection
# --------------------------------------------------------------------------


def connect(port: int, svid: Any, timeout: float = 10.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return tls_context(svid).wrap_socket(raw, server_hostname="localhost")


def read_response(tls: ssl.SSLSocket, timeout: float = 10.0) -> Resp | None:
    """Reads until one complete response with a Content-Length (or chunked
    body) has arrived, or the peer closes; returns it (None if nothing came)."""
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        responses = _complete(out)
        if responses:
            return responses[0]
        tls.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = tls.recv(65536)
        except (socket.timeout, TimeoutError, ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            break
        if not chunk:
            break
        out += chunk
    responses = parse_responses(out)
    return responses[0] if responses else None


def _complete(raw: bytes) -> list[Resp]:
    """The responses in `raw` if the first one is complete by its own framing."""
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        return []
    head_lower = raw[:head_end].lower()
    if b"content-length:" in head_lower:
        n = int(head_lower.split(b"content-length:")[1].split(b"\r\n")[0])
        return parse_responses(raw) if len(raw) >= head_end + 4 + n else []
    if b"chunked" in head_lower:
        return parse_responses(raw) if b"\r\n0\r\n" in raw[head_end:] else []
    return []


def read_all(tls: ssl.SSLSocket, timeout: float = 10.0) -> bytes:
    """Reads until the peer closes (or `timeout`, as a safety net)."""
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tls.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = tls.recv(65536)
        except (socket.timeout, TimeoutError):
            break
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            break
        if not chunk:
            break
        out += chunk
    return out


def exchange(port: int, svid: Any, parts: Iterable[bytes], timeout: float = 10.0) -> bytes:
    """Sends each part in turn on one TLS connection (stopping quietly if the
    gateway closes it), then reads until the gateway closes the connection."""
    with connect(port, svid, timeout) as tls:
        for part in parts:
            try:
                tls.sendall(part)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                break
        return read_all(tls, timeout)


def head(
    headers: Headers,
    *,
    method: str = "POST",
    path: str = "/mcp",
    eol: bytes = b"\r\n",
) -> bytes:
    """A request head from header pairs, in order, with Host first."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: localhost"]
    lines += [f"{k}: {v}".encode() for k, v in headers]
    return eol.join(lines) + eol + eol


def chunked(data: bytes, size: int = 0) -> bytes:
    """`data` in chunked transfer coding (one chunk, or chunks of `size`),
    with the last-chunk."""
    size = size or max(1, len(data))
    out = b""
    for i in range(0, len(data), size):
        piece = data[i : i + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def parse_responses(raw: bytes) -> list[Resp]:
    """Every complete HTTP/1.1 response in `raw` (Content-Length, chunked,
    or body until close)."""
    out: list[Resp] = []
    rest = raw
    while rest:
        head_end = rest.find(b"\r\n\r\n")
        if head_end < 0:
            break
        head_bytes, rest = rest[:head_end], rest[head_end + 4 :]
        lines = head_bytes.split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        status = int(status_line[1])
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers.append((k.decode("latin-1").strip(), v.decode("latin-1").strip()))
        hmap = {k.lower(): v for k, v in headers}
        if "chunked" in hmap.get("transfer-encoding", "").lower():
            body = b""
            while True:
                line_end = rest.find(b"\r\n")
                if line_end < 0:
                    rest = b""
                    break
                n = int(rest[:line_end].split(b";")[0], 16)
                rest = rest[line_end + 2 :]
                if n == 0:
                    trailer_end = rest.find(b"\r\n")
                    rest = rest[trailer_end + 2 :] if trailer_end >= 0 else b""
                    break
                body += rest[:n]
                rest = rest[n + 2 :]
        elif "content-length" in hmap:
            n = int(hmap["content-length"])
            body, rest = rest[:n], rest[n:]
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            body, rest = rest, b""
        out.append(Resp(status, headers, body))
    return out


def send_growing_chunked(
    port: int,
    svid: Any,
    headers: Headers,
    total: int,
    chunk_size: int = 64 * 1024,
    timeout: float = 15.0,
) -> Resp | None:
    """Sends a chunked body of JSON-looking padding, `total` bytes in
    `chunk_size` chunks, WITHOUT the last-chunk (the body never ends), then
    waits for the gateway's answer. Returns it (None if none came)."""
    prefix = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"'
    sent = 0
    with connect(port, svid, timeout) as tls:
        tls.sendall(head([*headers, ("Transfer-Encoding", "chunked")]))
        first = True
        while sent < total:
            piece = (prefix if first else b"") + b"x" * chunk_size
            first = False
            try:
                tls.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                break
            sent += len(piece)
        return read_response(tls, timeout)


# --------------------------------------------------------------------------
# HTTP/2 (and HTTP/1.1) through curl
# --------------------------------------------------------------------------


def curl(
    url: str,
    svid: Any,
    body: bytes | None = b"",
    headers: Headers = (),
    *,
    method: str = "POST",
    http2: bool = True,
    timeout: float = 30.0,
    extra: Sequence[str] = (),
) -> Resp:
    """One request with curl (the SVID as client certificate); HTTP/2 by ALPN."""
    with tempfile.TemporaryDirectory() as d:
        head_file, body_file, data_file = Path(d, "h"), Path(d, "b"), Path(d, "d")
        cmd = [
            "curl", "-sS", "--http2" if http2 else "--http1.1",
            "--cacert", str(svid.bundle), "--cert", str(svid.cert), "--key", str(svid.key),
            "-X", method, "-D", str(head_file), "-o", str(body_file),
            "-w", "%{http_version}",
        ]  # fmt: skip
        if method == "POST":
            cmd += ["-H", "Content-Type: application/json", "-H", "Accept: application/json, text/event-stream"]
        for k, v in headers:
            cmd += ["-H", f"{k}: {v}"]
        if body is not None and method == "POST":
            data_file.write_bytes(body)
            cmd += ["--data-binary", f"@{data_file}"]
        cmd += [*extra, url]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"curl failed ({p.returncode}): {p.stderr}")
        blocks = [b for b in head_file.read_text("latin-1").replace("\r\n", "\n").split("\n\n") if b.strip()]
        lines = blocks[-1].split("\n")
        status = int(lines[0].split()[1])
        hdrs = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs.append((k.strip(), v.strip()))
        return Resp(status, hdrs, body_file.read_bytes() if body_file.exists() else b"", p.stdout.strip())


# --------------------------------------------------------------------------
# The refusal contract
# --------------------------------------------------------------------------


def assert_refused(
    gw: Any,
    upstream: Any,
    resp: Resp,
    *,
    status: int,
    code: int,
    reason: str,
    seen: int,
    caller: str | None = None,
    reply_id: Any = ...,
) -> dict[str, Any]:
    """The refusal contract: HTTP status, JSON-RPC error with a correlation id,
    a deny audit record with that id and `reason`, and the upstream's request
    log unchanged since it held `seen` requests. Returns the audit record."""
    assert resp.status == status, resp
    reply = resp.json()
    assert isinstance(reply, dict) and reply.get("jsonrpc") == "2.0", resp
    err = reply.get("error")
    assert err and err.get("code") == code, resp
    if reply_id is not ...:
        assert reply.get("id") == reply_id, resp
    correlation = err["data"]["correlation_id"]
    records = gw.wait_audit(lambda r: r["correlation_id"] == correlation)
    record = next(r for r in records if r["correlation_id"] == correlation)
    assert record["decision"] == "deny", record
    assert record["reason"] == reason, record
    if caller is not None:
        assert record["caller"] == caller, record
    new = upstream.requests()[seen:]
    assert not new, f"refused request reached the upstream: {new}"
    return record
