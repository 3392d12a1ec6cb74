"""Byte-exact HTTP/1.1 over a real TLS socket: for tests that must control or see every byte.

``http.client`` hides framing (it adds headers, decodes chunks, retries); these tests need
to send exactly what they mean (bare heads with no body yet, chunked bodies with
extensions, headers one byte at a time) and to see exactly what came back, including
whether a chunked body ended with its final chunk and whether the connection closed.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any


class PeerClosed(Exception):
    """The server closed (or reset) the connection before the expected bytes arrived."""


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    #: chunked body: the final ``0`` chunk arrived (False: the stream was cut short)
    complete: bool = True
    head: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def json(self) -> Any:
        return json.loads(self.body)


class RawConn:
    """One client TLS connection to the proxy, driven byte by byte."""

    def __init__(self, port: int, ctx: ssl.SSLContext, *, timeout: float = 15.0,
                 server_hostname: str = "localhost") -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(sock, server_hostname=server_hostname)
        except BaseException:
            sock.close()
            raise
        self.buf = bytearray()
        self.eof = False

    # --- sending ------------------------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    # --- receiving ----------------------------------------------------------------------------------------------
    def _fill(self) -> None:
        if self.eof:
            raise PeerClosed("connection closed")
        try:
            chunk = self.sock.recv(262144)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            self.eof = True
            raise PeerClosed(f"connection reset: {exc!r}") from exc
        if not chunk:
            self.eof = True
            raise PeerClosed("connection closed")
        self.buf += chunk

    def readable(self, timeout: float = 0.0) -> bool:
        """Application bytes (or EOF/reset) arrived within ``timeout``; what arrived goes into ``buf``.

        A readable socket is not enough: TLS 1.3 session tickets make it readable with no
        application data, so this reads without blocking to find out.
        """
        if self.buf or self.eof:
            return True
        deadline = time.monotonic() + timeout
        while True:
            if self.sock.pending() or select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                saved = self.sock.gettimeout()
                self.sock.setblocking(False)
                try:
                    data = self.sock.recv(262144)
                except ssl.SSLWantReadError:
                    data = None
                except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                    self.eof = True
                    return True
                finally:
                    self.sock.settimeout(saved)
                if data is not None:
                    if not data:
                        self.eof = True
                    self.buf += data
                    return True
            if time.monotonic() >= deadline:
                return False

    def read_until(self, sep: bytes, limit: int = 1 << 20) -> bytes:
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise AssertionError(f"no {sep!r} within {limit} bytes")
            self._fill()

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_head(self) -> RawResponse:
        head = self.read_until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        version, status, *reason = lines[0].split(b" ", 2)
        assert version == b"HTTP/1.1", lines[0]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
        return RawResponse(int(status), reason[0].decode("latin-1") if reason else "", headers, head=head)

    def read_chunked(self, resp: RawResponse, *, tolerate_cut: bool = False) -> None:
        """Read a chunked body into ``resp``; with ``tolerate_cut`` a cut stream sets ``complete=False``."""
        body = bytearray()
        try:
            while True:
                size_line = self.read_until(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        line = self.read_until(b"\r\n")
                        if line == b"\r\n":
                            break
                        name, _, value = line[:-2].partition(b":")
                        resp.trailers.append((name.decode().lower(), value.strip().decode()))
                    resp.complete = True
                    break
                body += self.read_exact(size)
                assert self.read_exact(2) == b"\r\n", "bad chunk framing from the proxy"
        except PeerClosed:
            if not tolerate_cut:
                raise
            body += self.buf
            self.buf.clear()
            resp.complete = False
        resp.body = bytes(body)

    def read_response(self, *, head_request: bool = False, skip_interim: bool = True,
                      tolerate_cut: bool = False) -> RawResponse:
        """One response; ``head_request``: no body follows whatever the headers say."""
        while True:
            resp = self.read_head()
            if not (skip_interim and 100 <= resp.status < 200 and resp.status != 101):
                break
        if head_request or resp.status in (101, 204, 304):
            return resp
        te = resp.header("transfer-encoding")
        length = resp.header("content-length")
        if te is not None:
            assert te.lower() == "chunked", te
            self.read_chunked(resp, tolerate_cut=tolerate_cut)
        elif length is not None:
            n = int(length)
            try:
                resp.body = self.read_exact(n)
            except PeerClosed:
                if not tolerate_cut:
                    raise
                resp.body = bytes(self.buf)
                self.buf.clear()
                resp.complete = False
        else:  # close-delimited
            data = bytearray()
            try:
                while True:
                    self._fill()
                    data += self.buf
                    self.buf.clear()
            except PeerClosed:
                pass
            resp.body = bytes(data)
        return resp

    def closed_by_peer(self, timeout: float) -> bool:
        """True when the server closes (or resets) within ``timeout`` with nothing more to read.

        False when the connection is still open after ``timeout``; bytes arriving instead
        of EOF fail the test (they would be an unexpected response).
        """
        if self.buf:
            raise AssertionError(f"unexpected bytes from the proxy: {bytes(self.buf[:200])!r}")
        if not self.readable(timeout):
            return False
        if self.buf:
            raise AssertionError(f"unexpected bytes from the proxy: {bytes(self.buf[:200])!r}")
        return self.eof

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request_bytes(method: str, target: str, headers: list[tuple[str, str]] | None = None,
                  body: bytes = b"", *, host: str = "localhost", content_length: bool = True) -> bytes:
    """A request head (and body) exactly as given; Host first, Content-Length added for a body."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for k, v in headers or []:
        lines.append(f"{k}: {v}")
    if body and content_length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunk(data: bytes, ext: bytes = b"") -> bytes:
    return b"%x%s\r\n%s\r\n" % (len(data), ext, data)
