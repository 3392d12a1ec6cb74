"""Raw TLS client helpers: exact bytes in, and the precise outcome (HTTP status or TLS alert) out."""

from __future__ import annotations

import socket
import ssl


def raw_exchange(port: int, ctx: ssl.SSLContext, request: bytes, *, timeout: float = 10.0,
                 server_hostname: str = "localhost", read_all: bool = True) -> bytes:
    """Send ``request`` over a fresh TLS connection and return what came back until close (or one read)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
        tls.sendall(request)
        chunks = []
        while True:
            try:
                data = tls.recv(65536)
            except (ssl.SSLZeroReturnError, ConnectionResetError):
                break
            if not data:
                break
            chunks.append(data)
            if not read_all:
                break
        return b"".join(chunks)


def outcome(port: int, ctx: ssl.SSLContext, path: str = "/api/echo", timeout: float = 10.0) -> str:
    """``"http:<status>"`` if a response came back, else ``"tls:<alert or error text>"``.

    With TLS 1.3 the client finishes its handshake before the server has judged the
    client certificate; the server's refusal arrives as an alert on the first read.
    """
    req = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    try:
        data = raw_exchange(port, ctx, req, timeout=timeout)
    except ssl.SSLError as exc:
        return f"tls:{exc.reason or exc}"
    except (ConnectionError, OSError) as exc:
        return f"tls:{type(exc).__name__}"
    if not data:
        return "tls:closed"
    return "http:" + data.split(b" ", 2)[1].decode()


def status_and_body(data: bytes) -> tuple[int, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body
