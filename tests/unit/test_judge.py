"""judge() and judge_peer() without sockets: every reason code they can return, on a real state.

The state is loaded from a real config (real certificates, CRLs written at test time); variants
replace its policy or trust facts with ``dataclasses.replace``, as a reload would build them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import time

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import Encoding

from mtls_proxy.certs import PeerIdentity, parse_peer
from mtls_proxy.config import parse_size
from mtls_proxy.judging import ConnectionFacts, RequestHead, judge, judge_peer
from mtls_proxy.judging.outcomes import OUTCOMES
from mtls_proxy.pki import x509 as X
from mtls_proxy.policy import compile_policy
from mtls_proxy.state import CrlWindow, RuntimeState, TrustFacts, load_state
from tests.support.pki import TestPki
from tests.support.proxy import base_config

# The judge is given the time: a day after collection, so certificates the fixtures issue later (back-dated
# 5 min, whenever the suite reaches this module) are valid at NOW however long the run before it took.
NOW = time.time() + 86400
DAY = 86400.0

POLICY = {
    "rules": [
        {"name": "no-admin", "paths": ["/admin/"], "action": "deny"},
        {"name": "ops", "paths": ["/ops/"], "clients": [{"subject": {"CN": "operator"}}]},
        {"name": "upload", "paths": ["/upload/"], "clients": "any", "max_body_size": "1K"},
        {"name": "api", "paths": ["/api/"], "clients": "any"},
    ]
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> TestPki:
    return TestPki(tmp_path_factory.mktemp("judge-pki"))


@pytest.fixture(scope="module")
def state(tmp_path_factory, pki) -> RuntimeState:
    cfg = base_config(pki, "http://127.0.0.1:9", 8443)
    cfg["policy"] = POLICY
    cfg["admin"] = False
    path = tmp_path_factory.mktemp("judge-cfg") / "proxy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_state(path, NOW)


def der(cert) -> bytes:
    return cert.public_bytes(Encoding.DER)


def device(pki: TestPki, **kwargs) -> PeerIdentity:
    issued = X.issue_client({"CN": kwargs.pop("cn", "device-1"), "O": "Acme"}, kwargs.pop("issuer", pki.ca), **kwargs)
    return parse_peer(der(issued.cert), (der(pki.ca.cert),))


def facts(peer: PeerIdentity, sni: str | None = "localhost") -> ConnectionFacts:
    return ConnectionFacts(peer, sni, b"127.0.0.1")


def head(target: bytes = b"/api/x", *, method: bytes = b"GET", version: str = "1.1",
         headers: list[tuple[bytes, bytes]] | None = None, upgrade: bool = False) -> RequestHead:
    hs = [(b"Host", b"localhost")] if headers is None else headers
    return RequestHead.collect(method, target, version, hs, upgrade_requested=upgrade)


def reason(h: RequestHead, conn: ConnectionFacts, st: RuntimeState, now: float | None = None) -> str:
    verdict = judge(h, conn, st, NOW if now is None else now)
    assert verdict.reason in OUTCOMES or verdict.allowed, verdict.reason  # every reason has its outcome
    return verdict.reason


def with_trust(st: RuntimeState, **changes) -> RuntimeState:
    return dataclasses.replace(st, trust=dataclasses.replace(st.trust, **changes), peer_verdicts={})


def test_allowed_request_carries_rule_and_body_limit(pki, state):
    verdict = judge(head(b"/upload/a"), facts(device(pki)), state, NOW)
    assert (verdict.allowed, verdict.reason, verdict.rule, verdict.max_body, verdict.path) == (
        True, "allowed", "upload", 1024, "/upload/a")
    assert verdict.status == 200


@pytest.mark.parametrize(("request_head", "expected"), [
    (head(headers=[(b"Host", b"localhost"), (b"Transfer-Encoding", b"gzip, chunked")]), "unsupported_transfer_coding"),
    (head(headers=[(b"Host", b"localhost"), (b"Transfer-Encoding", b"gzip"), (b"Transfer-Encoding", b"chunked")]),
     "unsupported_transfer_coding"),
    (head(headers=[(b"Host", b"localhost"), (b"Expect", b"200-ok")]), "expectation_failed"),
    (head(headers=[(b"Host", b"localhost"), (b"Host", b"localhost")]), "multiple_host"),
    (head(version="0.9"), "http_version_not_supported"),
    (head(version="1.0", headers=[(b"Host", b"localhost"), (b"Transfer-Encoding", b"chunked")]), "te_in_http10"),
    (head(headers=[]), "missing_host"),
    (head(headers=[(b"Host", b"  ")]), "missing_host"),
    (head(headers=[(b"Host", b"localhost"), (b"Upgrade", b"h2c")], upgrade=True), "bad_upgrade"),
    (head(headers=[(b"Host", b"localhost"), (b"Upgrade", b"websocket"), (b"Content-Length", b"3")], upgrade=True),
     "bad_upgrade"),
    (head(b"*"), "not_origin_form"),
    (head(b"/api/a\x01"), "control_character"),
    (head(b"/api/a\\b"), "backslash"),
    (head(b"/api/a#b"), "fragment"),
    (head(b"/api/%zz"), "bad_percent_encoding"),
    (head(b"/api/a%2Fb"), "encoded_separator"),
    (head(b"/api/%ff"), "invalid_utf8"),
    (head(b"/api/" + b"a" * 9000), "path_too_long"),
    (head(b"/api" + b"/a" * 300), "too_many_segments"),
    (head(headers=[(b"Host", b"localhost:443@evil.example")]), "bad_host"),
    (head(headers=[(b"Host", b"localhost:1, evil.example")]), "bad_host"),
    (head(headers=[(b"Host", b"localhost:")]), "bad_host"),
    (head(headers=[(b"Host", b"localhost:99999")]), "bad_host"),
    (head(headers=[(b"Host", b"[::1")]), "bad_host"),
    (head(headers=[(b"Host", b"local host")]), "bad_host"),
    (head(headers=[(b"Host", b"evil.example")]), "host_sni_mismatch"),
    (head(b"/admin/x"), "denied_by_rule"),
    (head(b"/ops/x"), "client_not_allowed"),
    (head(b"/elsewhere"), "no_matching_rule"),
    (head(b"/upload/a", method=b"POST", headers=[(b"Host", b"localhost"), (b"Content-Length", b"2048")]),
     "body_too_large"),
])
def test_head_and_rule_reasons(pki, state, request_head, expected):
    assert reason(request_head, facts(device(pki)), state) == expected


def test_host_forms_that_are_accepted(pki, state):
    conn = facts(device(pki), sni=None)
    for host in (b"localhost", b"LOCALHOST:8443", b"127.0.0.1:1", b"[::1]:8443", b"[::1]"):
        assert judge(head(headers=[(b"Host", host)]), conn, state, NOW).allowed, host


def test_both_readings_must_be_allowed(pki, state):
    """``/admin/../api/x`` normalises to /api/x but Django routes it under /admin/: refused."""
    assert reason(head(b"/admin/../api/x"), facts(device(pki)), state) == "denied_by_rule"


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"ekus": None}, "client_auth_eku_missing"),
    ({"ekus": [X.EKU_SERVER]}, "client_auth_eku_missing"),
    ({"is_ca": True, "ekus": [X.EKU_CLIENT]}, "leaf_is_ca"),
    ({"not_before": dt.datetime.fromtimestamp(NOW + DAY, dt.UTC),
      "not_after": dt.datetime.fromtimestamp(NOW + 2 * DAY, dt.UTC)}, "cert_not_yet_valid"),
    ({"not_before": dt.datetime.fromtimestamp(NOW - 2 * DAY, dt.UTC),
      "not_after": dt.datetime.fromtimestamp(NOW - 1, dt.UTC)}, "cert_expired"),
])
def test_leaf_standing(pki, state, kwargs, expected):
    assert reason(head(), facts(device(pki, **kwargs)), state) == expected


def test_expiry_is_judged_at_the_time_given(pki, state):
    peer = device(pki, not_after=dt.datetime.fromtimestamp(NOW + 60, dt.UTC))
    assert judge(head(), facts(peer), state, NOW).allowed
    assert reason(head(), facts(peer), state, NOW + 61) == "cert_expired"
    verdict = judge_peer(peer, state, NOW)
    assert verdict.allowed and NOW < verdict.valid_until <= NOW + 60  # the registry re-judges then


def test_ca_not_trusted_and_chain_depth(pki, state):
    peer = device(pki)
    assert reason(head(), facts(peer), with_trust(state, anchors=frozenset({"00" * 32}))) == "ca_not_trusted"
    assert reason(head(), facts(peer), with_trust(state, max_chain=0)) == "allowed"  # 0: not checked
    inter = X.issue_ca({"CN": "Intermediate"}, issuer=pki.ca)
    leaf = X.issue_client({"CN": "deep"}, inter)
    deep = parse_peer(der(leaf.cert), (der(inter.cert), der(pki.ca.cert)))
    assert reason(head(), facts(deep), with_trust(state, max_chain=1)) == "chain_too_long"
    assert reason(head(), facts(deep), with_trust(state, max_chain=2)) == "allowed"


def test_revocation_of_leaf_and_of_an_intermediate(pki, state):
    inter = X.issue_ca({"CN": "Revocable Intermediate"}, issuer=pki.ca)
    leaf = X.issue_client({"CN": "under-inter"}, inter)
    peer = parse_peer(der(leaf.cert), (der(inter.cert), der(pki.ca.cert)))
    assert reason(head(), facts(peer), state) == "allowed"
    leaf_revoked = frozenset({(peer.issuer_dn, peer.serial)})
    assert reason(head(), facts(peer), with_trust(state, revoked=leaf_revoked)) == "revoked"
    root_dn = pki.ca.cert.subject.rfc4514_string()
    inter_revoked = frozenset({(root_dn, inter.cert.serial_number)})
    assert reason(head(), facts(peer), with_trust(state, revoked=inter_revoked)) == "ca_revoked"
    # the same serial under another issuer is another certificate
    other = frozenset({("CN=Someone Else", peer.serial)})
    assert reason(head(), facts(peer), with_trust(state, revoked=other)) == "allowed"


def test_chain_validity(pki, state):
    expired_inter = X.issue_ca({"CN": "Old Intermediate"}, issuer=pki.ca,
                               not_before=dt.datetime.fromtimestamp(NOW - 10 * DAY, dt.UTC),
                               not_after=dt.datetime.fromtimestamp(NOW - DAY, dt.UTC))
    leaf = X.issue_client({"CN": "old-chain"}, expired_inter)
    peer = parse_peer(der(leaf.cert), (der(expired_inter.cert), der(pki.ca.cert)))
    assert reason(head(), facts(peer), state) == "ca_expired"
    future_inter = X.issue_ca({"CN": "Future Intermediate"}, issuer=pki.ca,
                              not_before=dt.datetime.fromtimestamp(NOW + DAY, dt.UTC),
                              not_after=dt.datetime.fromtimestamp(NOW + 10 * DAY, dt.UTC))
    leaf2 = X.issue_client({"CN": "future-chain"}, future_inter)
    peer2 = parse_peer(der(leaf2.cert), (der(future_inter.cert), der(pki.ca.cert)))
    assert reason(head(), facts(peer2), state) == "ca_not_yet_valid"


def test_crl_freshness(pki, state):
    peer = device(pki)
    issuer = pki.ca.cert.subject.rfc4514_string()
    stale = (CrlWindow(issuer, "crl.pem", dt.datetime.fromtimestamp(NOW - 1, dt.UTC)),)
    assert reason(head(), facts(peer), with_trust(state, crls=stale)) == "crl_expired"
    fresh = (CrlWindow(issuer, "crl.pem", dt.datetime.fromtimestamp(NOW + 60, dt.UTC)),)
    st = with_trust(state, crls=fresh)
    assert reason(head(), facts(peer), st) == "allowed"
    assert reason(head(), facts(peer), st, NOW + 61) == "crl_expired"  # an hour later, on the same state
    assert judge_peer(peer, st, NOW).valid_until <= NOW + 60.001  # the registry re-judges then
    unrelated = (CrlWindow("CN=Other", "o.pem", dt.datetime.fromtimestamp(NOW - 1, dt.UTC)),)
    assert reason(head(), facts(peer), with_trust(state, crls=unrelated)) == "allowed"


def test_denylist(pki, state):
    peer = device(pki)
    for deny in ({"serials": [format(peer.serial, "x")]}, {"fingerprints": [peer.fingerprint_sha256]},
                 {"spki": [peer.spki_sha256]}):
        policy, problems = compile_policy({**POLICY, "deny": deny}, "policy", parse_size)
        assert problems == [] and policy is not None
        st = dataclasses.replace(state, policy=policy, peer_verdicts={})
        assert reason(head(), facts(peer), st) == "denylisted"


def test_judgment_is_pure_and_memo_does_not_change_it(pki, state):
    peer = device(pki, not_after=dt.datetime.fromtimestamp(NOW + 30, dt.UTC))
    first = judge(head(), facts(peer), state, NOW)
    assert judge(head(), facts(peer), state, NOW) == first
    # the memoised good standing is not reused past its window
    assert reason(head(), facts(peer), state, NOW + 31) == "cert_expired"
    assert judge(head(), facts(peer), state, NOW) == first


def test_every_outcome_reason_is_reachable_or_a_proxy_failure():
    """The outcome table holds no reason that nothing produces (the parametrised cases above cover them)."""
    # parser limits, the body timer, admission (rate per address)
    produced_elsewhere = {"request_head_too_large", "client_body_timeout", "rate_limited"}
    covered = {
        "unsupported_transfer_coding", "expectation_failed", "multiple_host", "http_version_not_supported",
        "te_in_http10", "missing_host", "bad_upgrade", "not_origin_form", "control_character", "backslash",
        "fragment", "bad_percent_encoding", "encoded_separator", "invalid_utf8", "bad_host", "host_sni_mismatch",
        "denied_by_rule", "client_not_allowed", "no_matching_rule", "body_too_large", "client_auth_eku_missing",
        "leaf_is_ca", "cert_not_yet_valid", "cert_expired", "ca_not_trusted", "chain_too_long", "revoked",
        "ca_revoked", "ca_expired", "ca_not_yet_valid", "crl_expired", "denylisted", "path_too_long",
        "too_many_segments", "client_cert_required",
    }
    assert set(OUTCOMES) <= covered | produced_elsewhere, set(OUTCOMES) - covered - produced_elsewhere


def test_anchor_hash_is_the_configured_ca(pki, state):
    assert hashlib.sha256(der(pki.ca.cert)).hexdigest() in state.trust.anchors
    assert isinstance(state.trust, TrustFacts)


def test_client_without_a_certificate(state):
    policy, problems = compile_policy({"rules": [
        {"name": "enroll", "paths": ["/enroll/"], "clients": "none"},
        {"name": "both", "paths": ["/renew/"], "clients": ["none", "any"]},
        {"name": "api", "paths": ["/api/"], "clients": "any"},
    ]}, "policy", parse_size)
    assert problems == [] and policy is not None
    st = dataclasses.replace(state, policy=policy, peer_verdicts={})
    anonymous = ConnectionFacts(None, "localhost", b"127.0.0.1")
    assert judge(head(b"/enroll/x"), anonymous, st, NOW).allowed
    assert judge(head(b"/renew/x"), anonymous, st, NOW).allowed
    assert reason(head(b"/api/x"), anonymous, st) == "client_cert_required"
    assert reason(head(b"/other"), anonymous, st) == "no_matching_rule"


def test_none_admits_only_clients_without_a_certificate(pki, state):
    policy, _ = compile_policy({"rules": [{"name": "enroll", "paths": ["/enroll/"], "clients": "none"}]},
                               "policy", parse_size)
    st = dataclasses.replace(state, policy=policy, peer_verdicts={})
    assert reason(head(b"/enroll/x"), facts(device(pki)), st) == "client_not_allowed"


def test_pinned_certificate_without_eku_is_judged_like_any_client(state):
    """The trust checks come from trust.certificate_refusal; deny-list, CRLs and rules apply as usual."""
    pinned = X.issue_certificate({"CN": "pinned-app"}, ekus=None)  # self-signed, no EKU
    p = parse_peer(der(pinned.cert))
    fp = p.fingerprint_sha256
    assert reason(head(), facts(p), with_trust(state, pinned=frozenset({fp}))) == "allowed"
    assert reason(head(), facts(p), state) == "client_auth_eku_missing"  # not pinned: no EKU is refused
    policy, _ = compile_policy({**POLICY, "deny": {"fingerprints": [fp]}}, "policy", parse_size)
    denied = dataclasses.replace(with_trust(state, pinned=frozenset({fp})), policy=policy, peer_verdicts={})
    assert reason(head(), facts(p), denied) == "denylisted"
    revoked = with_trust(state, pinned=frozenset({fp}), revoked=frozenset({(p.issuer_dn, p.serial)}))
    assert reason(head(), facts(p), revoked) == "revoked"
