"""Helpers for the hardening tests: exact bytes over real mTLS, every response parsed, EOF observed.

``converse`` sends bytes on a fresh TLS connection to a real proxy process, then reads and
parses responses until the proxy closes the connection (or ``expect`` responses arrived
and nothing else came within ``linger``). It reports whether the proxy closed, so a test
can assert "400 and closed" exactly. ``django_saw`` asks the demo Django app *directly*
(over its Unix socket, not through the proxy) which requests reached its probe view.
"""

from __future__ import annotations

import json
import re
import select
import socket
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name.lower():
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def reason(self) -> str | None:
        try:
            return str(self.json().get("reason"))
        except (ValueError, AttributeError):
            return None


@dataclass
class Conversation:
    raw: bytes
    responses: list[Response] = field(default_factory=list)
    closed: bool = False  # the proxy closed (or reset) the connection within the time allowed
    leftover: bytes = b""

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


def _parse(buf: bytes, eof: bool) -> tuple[list[Response], bytes]:
    """Parse as many complete responses as ``buf`` holds; returns them and the unparsed rest."""
    out: list[Response] = []
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return out, buf
        lines = buf[:end].split(b"\r\n")
        m = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0])
        if not m:
            raise AssertionError(f"not an HTTP response: {buf[:200]!r}")
        status = int(m.group(1))
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers.append((k.decode("latin-1").strip().lower(), v.strip().decode("latin-1")))
        hdict = dict(headers)
        rest = buf[end + 4 :]
        if 100 <= status < 200 or status in (204, 304):
            if status != 101:
                if status >= 200:
                    out.append(Response(status, headers, b""))
                buf = rest
                continue
            out.append(Response(status, headers, b""))
            return out, rest
        if hdict.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            pos = 0
            while True:
                eol = rest.find(b"\r\n", pos)
                if eol < 0:
                    return out, buf
                size = int(rest[pos:eol].split(b";")[0], 16)
                if size == 0:
                    tend = rest.find(b"\r\n\r\n", eol)
                    if tend < 0 and rest[eol : eol + 4] != b"\r\n\r\n":
                        return out, buf
                    pos = (tend + 4) if tend >= 0 else eol + 4
                    break
                if len(rest) < eol + 2 + size + 2:
                    return out, buf
                body += rest[eol + 2 : eol + 2 + size]
                pos = eol + 2 + size + 2
            out.append(Response(status, headers, bytes(body)))
            buf = rest[pos:]
        elif "content-length" in hdict:
            n = int(hdict["content-length"])
            if len(rest) < n:
                return out, buf
            out.append(Response(status, headers, rest[:n]))
            buf = rest[n:]
        else:  # close-delimited
            if not eof:
                return out, buf
            out.append(Response(status, headers, rest))
            return out, b""


def open_tls(port: int, ctx: ssl.SSLContext, *, server_hostname: str | None = "localhost",
             timeout: float = 10.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def read_conversation(tls: ssl.SSLSocket, *, expect: int | None = None, timeout: float = 8.0,
                      linger: float = 0.3) -> Conversation:
    """Read until EOF; or, with ``expect``, until that many responses then ``linger`` more seconds."""
    buf = b""
    raw = b""
    closed = False
    deadline = time.monotonic() + timeout
    responses: list[Response] = []
    while True:
        if expect is not None and len(responses) >= expect:
            deadline = min(deadline, time.monotonic() + linger)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if not tls.pending():
            r, _, _ = select.select([tls], [], [], remaining)
            if not r:
                break
        try:
            data = tls.recv(65536)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
            data = b""
        except ssl.SSLWantReadError:
            continue
        if not data:
            closed = True
            break
        raw += data
        buf += data
        more, buf = _parse(buf, False)
        responses += more
    more, buf = _parse(buf, closed)
    responses += more
    return Conversation(raw, responses, closed, buf)


def converse(port: int, ctx: ssl.SSLContext, data: bytes | list[bytes], *, expect: int | None = None,
             timeout: float = 8.0, linger: float = 0.3, server_hostname: str | None = "localhost",
             gap: float = 0.05) -> Conversation:
    """Send ``data`` (a list: sent piece by piece, ``gap`` seconds apart) and read the outcome."""
    with open_tls(port, ctx, server_hostname=server_hostname, timeout=timeout) as tls:
        pieces = data if isinstance(data, list) else [data]
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(gap)
            try:
                tls.sendall(piece)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                break  # the proxy closed already; what it answered is read below
        return read_conversation(tls, expect=expect, timeout=timeout, linger=linger)


def new_marker(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def probe_request(marker: str, *, close: bool = True, extra: str = "") -> bytes:
    """A well-formed GET that Django records under ``marker`` if it ever runs."""
    conn = "Connection: close\r\n" if close else ""
    return f"GET /api/probe/{marker} HTTP/1.1\r\nHost: localhost\r\n{extra}{conn}\r\n".encode()


def django_saw(upstream: Any, marker: str) -> list[dict[str, Any]]:
    """Every request Django's probe view recorded for ``marker`` (asked directly, bypassing the proxy)."""
    conn = upstream.connection(timeout=10)
    try:
        conn.request("GET", f"/api/probe-seen/{marker}")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (resp.status, body[:200])
        return list(json.loads(body)["requests"])
    finally:
        conn.close()


def proxy_judged(proxy: Any, marker: str) -> list[str]:
    """Access-log lines of ``proxy`` whose path names ``marker`` (the requests it judged)."""
    return [line for line in list(proxy.logs) if "mtls_proxy.access" in line and marker in line]
