"""Path policy bypass corpus: no spelling of /admin/ reaches Django's admin view.

Policy (conftest.GUARD_POLICY): /admin/ denied to everyone, /api/ (and /ws/) allowed to every
verified client. Each target is either refused by the proxy (400 with the normaliser's reason,
403 with the policy's) or reaches Django, whose answer says where it was routed: the echo view
(``/api/echo/...``) reports the path Django saw, or Django's own 404 page. The admin view
answers ``{"area": "admin"}``, which must never come back.

tests/integration/test_policy_paths.py has the first 14 spellings; these are all different.
"""

from __future__ import annotations

import pytest

from tests.hardening.wire import Conversation, converse

ADMIN_MARK = b'"area": "admin"'


def refused(status: int, reason: str) -> tuple[str, int, str]:
    return ("refused", status, reason)


def echoed(path: str, query: str = "") -> tuple[str, str, str]:
    """Reached Django's echo view, which routed ``path`` (decoded once, as sent)."""
    return ("echo", path, query)


DJANGO_404 = ("django404", "", "")

CORPUS: list[tuple[str, tuple[str, object, str]]] = [
    # --- encoded separators and backslashes: refused, never decoded into a separator ---
    ("/admin%2f", refused(400, "encoded_separator")),
    ("/api%2F..%2Fadmin/", refused(400, "encoded_separator")),
    ("/api/%5c../admin", refused(400, "encoded_separator")),
    ("/api/%255c/../x%2fy", refused(400, "encoded_separator")),
    ("/api\\..\\admin", refused(400, "backslash")),
    # --- overlong / invalid UTF-8 (dots and slashes in disguise) ---
    ("/%C0%AE%C0%AE/admin", refused(400, "invalid_utf8")),
    ("/api/%C0%AE%C0%AE/%C0%AFadmin", refused(400, "invalid_utf8")),
    ("/api/%E0%80%AE%E0%80%AE/admin", refused(400, "invalid_utf8")),
    ("/api/%F0%80%80%AE%F0%80%80%AE/admin", refused(400, "invalid_utf8")),
    ("/api/%ED%A0%80", refused(400, "invalid_utf8")),  # a UTF-16 surrogate
    ("/api/%C1%9C", refused(400, "invalid_utf8")),  # overlong backslash
    # --- broken percent-encoding ---
    ("/api/%u002e%u002e/admin", refused(400, "bad_percent_encoding")),  # IIS-style %u
    ("/api/%2", refused(400, "bad_percent_encoding")),
    ("/api/%%32%65%%32%65/admin", refused(400, "bad_percent_encoding")),
    # --- control characters, CRLF injection, NUL truncation ---
    ("/api/%0d%0aX-Injected:%20y", refused(400, "control_character")),
    ("/api/%09", refused(400, "control_character")),
    ("/api/%7F", refused(400, "control_character")),
    ("/admin%00.json", refused(400, "control_character")),
    # --- fragments and other request-target forms ---
    ("/admin#/../api/echo", refused(400, "fragment")),
    ("/api/echo#frag", refused(400, "fragment")),
    ("admin/", refused(400, "bad_target")),
    # --- dot-segments, encoded or not: judged as the resolved path and as Django routes it ---
    ("/%2e%2e/admin/", refused(403, "denied_by_rule")),
    ("/%2E/admin/", refused(403, "denied_by_rule")),
    ("/api/%2e%2e/%2e%2e/admin", refused(403, "denied_by_rule")),
    ("/api/.%2e/admin/", refused(403, "denied_by_rule")),
    ("/api/%2e./admin", refused(403, "denied_by_rule")),
    ("/api/./../admin/", refused(403, "denied_by_rule")),
    ("/./././admin", refused(403, "denied_by_rule")),
    ("/api/../api/../admin", refused(403, "denied_by_rule")),
    ("/api/echo/../../admin?x=1", refused(403, "denied_by_rule")),
    ("/api/x//../../admin", refused(403, "denied_by_rule")),
    # Django routes these under /admin (it removes no dot-segments): refused on that reading
    ("/admin/../api/echo", refused(403, "denied_by_rule")),
    ("/admin//..//api/echo", refused(403, "denied_by_rule")),
    ("/admin/x/../../api/echo", refused(403, "denied_by_rule")),
    ("/admin/%2e%2e/api/echo", refused(403, "denied_by_rule")),
    ("/admin/./../api/", refused(403, "denied_by_rule")),
    # --- repeated slashes ---
    ("///admin///", refused(403, "denied_by_rule")),
    ("//api/echo", refused(403, "no_matching_rule")),  # Django routes '//api/echo' (no route); not /api/
    # --- ';' parameters, trailing dots and spaces ---
    ("/admin;/", refused(403, "no_matching_rule")),
    ("/admin;jsessionid=1", refused(403, "no_matching_rule")),
    ("/admin.", refused(403, "no_matching_rule")),
    ("/admin%2e", refused(403, "no_matching_rule")),
    ("/admin%20", refused(403, "no_matching_rule")),
    ("/admin/%3F/api", refused(403, "denied_by_rule")),  # an encoded '?' is path data
    ("/admin?/api/", refused(403, "denied_by_rule")),  # the query is not part of the path
    # --- case and Unicode look-alikes (Django's routes are case-sensitive and not normalised) ---
    ("/adm%69n/", refused(403, "denied_by_rule")),
    ("/%61%64%6d%69%6e/", refused(403, "denied_by_rule")),
    ("/%41dmin/", refused(403, "no_matching_rule")),
    ("/ADMIN", refused(403, "no_matching_rule")),
    ("/adm%C4%B0n/", refused(403, "no_matching_rule")),  # capital I with dot
    ("/adm%C4%B1n/", refused(403, "no_matching_rule")),  # dotless i
    ("/%EF%BD%81%EF%BD%84%EF%BD%8D%EF%BD%89%EF%BD%8E/", refused(403, "no_matching_rule")),  # fullwidth
    ("/admin%E2%80%8B/", refused(403, "no_matching_rule")),  # zero-width space
    # --- allowed: Django routes them to an allowed view, and says what it routed ---
    ("/api/echo/%252e%252e/admin", echoed("/api/echo/%2e%2e/admin")),  # double encoding decoded once
    ("/api/echo/%25%32%65", echoed("/api/echo/%2e")),
    ("/api/echo/..;/..;/admin", echoed("/api/echo/..;/..;/admin")),
    ("/api/echo/%3F../../admin", echoed("/api/echo/?../../admin")),
    ("/api/echo/%23/../../admin", echoed("/api/echo/#/../../admin")),
    ("/api/echo/%2e", echoed("/api/echo/.")),
    ("/api/echo/%E2%80%AE", echoed("/api/echo/\u202e")),  # right-to-left override is data
    ("/api/echo/%F0%9F%98%80", echoed("/api/echo/\U0001f600")),
    ("/api/echo/a%20b", echoed("/api/echo/a b")),
    ("/api/echo/x?y=/admin/&z=%2F", echoed("/api/echo/x", "y=/admin/&z=%2F")),
    ("/api/echo/" + "a" * 4000, echoed("/api/echo/" + "a" * 4000)),  # long, within max_head_size
    ("/api//echo", DJANGO_404),
    ("/api/..;/admin/", DJANGO_404),
    ("/api/;/../admin/", DJANGO_404),
]


def _get(guarded, target: str) -> Conversation:
    req = f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    return converse(guarded.port, guarded.ctx, req)


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 40
    assert len({t for t, _ in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize(("target", "expected"), CORPUS, ids=[t[:60] for t, _ in CORPUS])
def test_no_spelling_reaches_admin(guarded, target, expected):
    conv = _get(guarded, target)
    assert len(conv.responses) == 1, conv.raw[:300]
    resp = conv.responses[0]
    assert ADMIN_MARK not in resp.body
    kind, a, b = expected
    if kind == "refused":
        assert (resp.status, resp.reason) == (a, b)
    elif kind == "echo":
        assert resp.status == 200
        seen = resp.json()
        assert seen["path"] == a
        assert seen["path_info"] == a
        assert seen["query_string"] == b
        assert seen["raw_path"] == target.partition("?")[0]  # forwarded byte for byte
    else:
        assert resp.status == 404
        assert b"<title>Not Found</title>" in resp.body  # Django's own 404: no route, not the admin view


def test_path_longer_than_the_head_limit_is_431(guarded):
    conv = _get(guarded, "/admin/" + "a" * 20000)
    assert conv.statuses == [431]
    assert conv.responses[0].reason == "request_head_too_large"
    assert conv.closed


def test_admin_view_is_really_there(guarded):
    """The oracle works: straight to Django (bypassing the proxy) /admin/ answers the admin area."""
    conn = guarded.upstream.connection()
    try:
        conn.request("GET", "/admin/../api/echo")
        resp = conn.getresponse()
        assert resp.status == 200
        assert ADMIN_MARK in resp.read()
    finally:
        conn.close()
