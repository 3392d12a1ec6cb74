"""The HTTP/1.1 path-policy bypass corpus (tests/hardening/test_path_bypass.py), over HTTP/2.

Every spelling is one stream of the same connection (concurrently): each gets exactly the outcome
it gets over HTTP/1.1, refusals on some streams leave the others alone, and no spelling reaches
Django's admin view. The one difference: ``admin/`` (no leading slash) is refused by llhttp over
HTTP/1.1 (``bad_target``) but reaches judge() over HTTP/2 as ``:path``: 400 ``not_origin_form``.
"""

from __future__ import annotations

import json

import pytest

from tests.hardening.conftest import isolated
from tests.hardening.headjudge import GUARD_POLICY
from tests.hardening.test_path_bypass import ADMIN_MARK, CORPUS, refused
from tests.support.h2client import H2Client

pytestmark = pytest.mark.timeout(120)

OVER_H2 = {"admin/": refused(400, "not_origin_form")}


def test_corpus_over_one_http2_connection(proxies, pki):
    proxy = proxies.start(**isolated(policy=GUARD_POLICY))
    client = H2Client(proxy.port, pki.client_context(pki.client("h2-corpus")))
    try:
        sids = {target: client.request("GET", target) for target, _ in CORPUS}
        client.wait_for(lambda: all(client.streams[s].done for s in sids.values()), 60)
    finally:
        client.close()
    failures = []
    for target, expected in CORPUS:
        r = client.streams[sids[target]]
        kind, a, b = OVER_H2.get(target, expected)
        assert ADMIN_MARK not in r.body, target
        if kind == "refused":
            got = (r.status, json.loads(r.body)["reason"]) if r.headers else ("reset", r.reset)
            ok = got == (a, b)
        elif kind == "echo":
            seen = json.loads(r.body) if r.status == 200 else {}
            got = (r.status, seen.get("path"), seen.get("query_string"), seen.get("raw_path"))
            ok = got == (200, a, b, target.partition("?")[0])
        else:
            got = (r.status, b"<title>Not Found</title>" in r.body)
            ok = got == (404, True)
        if not ok:
            failures.append((target, expected, got))
    assert not failures, failures
