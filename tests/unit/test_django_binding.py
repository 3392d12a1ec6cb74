"""What the Django side rebuilds from the server's view of the request: ASGI scopes and WSGI environs."""

from __future__ import annotations

from typing import Any

import pytest

from mtls_proxy.django.binding import binding_from_environ, binding_from_scope, framing_from_headers
from mtls_proxy.identity import IdentityError, RequestBinding


def scope(raw_path: bytes | None = b"/api/echo/a%2Fb", query: bytes = b"x=%20&y=1", method: str = "POST",
          headers: list[tuple[bytes, bytes]] | None = None, kind: str = "http") -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "path": "/api/echo/a/b", "query_string": query,
                           "headers": headers if headers is not None else [(b"host", b"api.example:8443"),
                                                                           (b"content-length", b"5")]}
    if kind == "http":
        out["method"] = method
    if raw_path is not None:
        out["raw_path"] = raw_path
    return out


def test_scope_gives_the_raw_target_host_and_length() -> None:
    assert binding_from_scope(scope()) == RequestBinding(
        b"POST", b"/api/echo/a%2Fb?x=%20&y=1", b"api.example:8443", b"length=5"
    )
    assert binding_from_scope(scope(query=b"")).target == b"/api/echo/a%2Fb"  # "/a?" and "/a" are one request


def test_scope_duplicates_and_framing() -> None:
    two_hosts = scope(headers=[(b"host", b"a.example"), (b"Host", b"b.example")])
    assert binding_from_scope(two_hosts).host == b"a.example,b.example"  # cannot match what the proxy signed
    assert binding_from_scope(scope(headers=[(b"transfer-encoding", b"chunked")])).framing == b"chunked"
    assert binding_from_scope(scope(headers=[])).framing == b"none"
    assert binding_from_scope(scope(headers=[])).host == b""
    both = [(b"transfer-encoding", b"chunked"), (b"content-length", b"5")]
    assert binding_from_scope(scope(headers=both)).framing == b"invalid"
    assert binding_from_scope(scope(headers=[(b"content-length", b"5"), (b"content-length", b"6")])).framing == (
        b"length=5,6"
    )


def test_websocket_scope_is_a_get() -> None:
    ws = binding_from_scope(scope(raw_path=b"/ws/echo", query=b"", kind="websocket", headers=[(b"host", b"h")]))
    assert ws == RequestBinding(b"GET", b"/ws/echo", b"h", b"none")


def test_scope_without_raw_path_cannot_verify() -> None:
    with pytest.raises(IdentityError) as info:
        binding_from_scope(scope(raw_path=None))
    assert info.value.reason == "target_unavailable"


def test_environ_from_gunicorn_and_uwsgi() -> None:
    gunicorn = {"REQUEST_METHOD": "put", "RAW_URI": "/api/echo/a%2Fb?x=%20", "PATH_INFO": "/api/echo/a/b",
                "HTTP_HOST": "localhost", "CONTENT_LENGTH": "3"}
    assert binding_from_environ(gunicorn) == RequestBinding(b"PUT", b"/api/echo/a%2Fb?x=%20", b"localhost", b"length=3")
    uwsgi = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/api/x?", "HTTP_HOST": "h", "CONTENT_LENGTH": ""}
    assert binding_from_environ(uwsgi) == RequestBinding(b"GET", b"/api/x", b"h", b"none")
    chunked = {**gunicorn, "CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked"}
    assert binding_from_environ(chunked).framing == b"chunked"


def test_environ_without_a_raw_target_cannot_verify() -> None:
    # wsgiref and others give only the decoded PATH_INFO: no guessing at the encoding
    with pytest.raises(IdentityError) as info:
        binding_from_environ({"REQUEST_METHOD": "GET", "PATH_INFO": "/api/x", "QUERY_STRING": ""})
    assert info.value.reason == "target_unavailable"


@pytest.mark.parametrize(
    ("length", "coding", "framing"),
    [(None, None, b"none"), (b"0", None, b"length=0"), (b" 12 ", None, b"length=12"), (None, b"Chunked", b"chunked"),
     (None, b"gzip, chunked", b"invalid"), (b"3", b"chunked", b"invalid")],
)
def test_framing_from_headers(length: bytes | None, coding: bytes | None, framing: bytes) -> None:
    assert framing_from_headers(length, coding) == framing
