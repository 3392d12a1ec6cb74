"""Path policy on the bytes Django routes: no spelling of /admin reaches the admin area."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.tlsclient import raw_exchange, status_and_body

POLICY = {
    "rules": [
        {"name": "no-admin", "paths": ["/admin/"], "action": "deny"},
        {"name": "no-echo-reads", "methods": ["GET"], "paths": ["/api/echo/private"], "action": "deny"},
        {"name": "api", "paths": ["/api/"], "clients": "any"},
    ]
}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, pki, upstream):
    from tests.support.proxy import ProxyFactory

    factory = ProxyFactory(tmp_path_factory.mktemp("paths"), pki, upstream.url)
    proxy = factory.start(policy=POLICY)
    yield proxy, pki.client_context(pki.client("path-tester"))
    factory.close()


def send(proxy, ctx, target: str, method: str = "GET") -> tuple[int, bytes]:
    req = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    return status_and_body(raw_exchange(proxy.port, ctx, req))


@pytest.mark.parametrize(
    ("target", "status", "reason"),
    [
        ("/admin/", 403, "denied_by_rule"),
        ("//admin/", 403, "denied_by_rule"),
        ("/./admin/", 403, "denied_by_rule"),
        ("/api/../admin/", 403, "denied_by_rule"),
        ("/api/%2e%2e/admin/", 403, "denied_by_rule"),
        ("/%61dmin/", 403, "denied_by_rule"),
        ("/admin", 403, "denied_by_rule"),
        ("/admin%2F", 400, "encoded_separator"),
        ("/api/..%2Fadmin/", 400, "encoded_separator"),
        ("/api/..%5Cadmin/", 400, "encoded_separator"),
        ("/api/%00/", 400, "control_character"),
        ("/api/%zz", 400, "bad_percent_encoding"),
        ("/api/%C3", 400, "invalid_utf8"),
        ("/ADMIN/", 403, "no_matching_rule"),
    ],
)
def test_admin_spellings_never_reach_admin(guarded, target, status, reason):
    proxy, ctx = guarded
    got, body = send(proxy, ctx, target)
    assert got == status
    assert json.loads(body)["reason"] == reason
    assert b'"area": "admin"' not in body


def test_allowed_path_reaches_django(guarded):
    proxy, ctx = guarded
    got, body = send(proxy, ctx, "/api/files/a/b.txt")
    assert got == 200
    assert b'"rest": "a/b.txt"' in body.replace(b"\r\n", b"")


@pytest.mark.parametrize(("method", "target", "status", "reason"), [
    ("GET", "/api/echo/private", 403, "denied_by_rule"),
    ("HEAD", "/api/echo/private", 403, "denied_by_rule"),  # Django would serve HEAD with the GET view
    ("GET", "/api/echo/private/", 403, "denied_by_rule"),  # the trailing-slash form of an exact path
    ("HEAD", "/api/echo/private//", 403, "denied_by_rule"),  # merged to the slash form first
    ("POST", "/api/echo/private", 200, "allowed"),  # the deny names GET only
    ("GET", "/api/echo/private/x", 200, "allowed"),  # an exact path, not a prefix
])
def test_get_deny_covers_head_and_the_trailing_slash(guarded, method, target, status, reason):
    proxy, ctx = guarded
    start = proxy.log_count()
    got, body = send(proxy, ctx, target, method)
    assert got == status
    assert (body == b"") is (method == "HEAD")
    rule = "no-echo-reads" if status == 403 else "api"
    proxy.wait_for_log(rf"method={method} path={re.escape(target)} status={status} .* rule={rule} reason={reason}",
                       start=start)
