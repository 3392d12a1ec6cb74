"""Policy compilation and evaluation, without sockets (the policy module is pure)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from mtls_proxy.certs import PeerIdentity, parse_peer
from mtls_proxy.config import parse_size
from mtls_proxy.pki import x509 as X
from mtls_proxy.policy import Policy, compile_policy

CA = X.issue_ca({"CN": "Unit CA", "O": "Acme"})
OTHER_CA = X.issue_ca({"CN": "Other Unit CA"})


def peer(subject=None, issuer=CA, **kwargs) -> PeerIdentity:
    issued = X.issue_client(subject or {"CN": "device-1", "O": "Acme", "OU": "phones"}, issuer, **kwargs)
    return parse_peer(issued.cert.public_bytes(Encoding.DER))


def compile_ok(raw) -> Policy:
    policy, problems = compile_policy(raw, "policy", parse_size)
    assert problems == []
    assert policy is not None
    return policy


def allow_only(client) -> Policy:
    return compile_ok({"rules": [{"name": "r", "paths": ["/api/"], "clients": [client]}]})


DEVICE = peer(dns=["d1.devices.example"], uris=["spiffe://acme/device/1"], emails=["d1@example.com"],
              ips=["10.1.2.3"])


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        ({"subject": {"CN": "device-1"}}, True),
        ({"subject": {"CN": "device-2"}}, False),
        ({"subject": {"CN": "device-*"}}, True),
        ({"subject": {"CN": "dev?ce-1"}}, True),
        ({"subject": {"O": "Acme", "OU": "phones"}}, True),
        ({"subject": {"O": "Acme", "OU": "tablets"}}, False),
        ({"issuer": {"CN": "Unit CA"}}, True),
        ({"issuer": {"CN": "Other Unit CA"}}, False),
        ({"san": {"dns": "d1.devices.example"}}, True),
        ({"san": {"dns": "*.devices.example"}}, True),
        ({"san": {"dns": "*.example"}}, False),  # '*' is one DNS label
        ({"san": {"dns": "D1.DEVICES.EXAMPLE"}}, True),  # DNS is case-insensitive
        ({"san": {"uri": "spiffe://acme/device/*"}}, True),
        ({"san": {"uri": "spiffe://other/*"}}, False),
        ({"san": {"email": "d1@example.com"}}, True),
        ({"san": {"email": "d2@example.com"}}, False),
        ({"san": {"ip": "10.1.0.0/16"}}, True),
        ({"san": {"ip": "10.2.0.0/16"}}, False),
        ({"san": {"dns": "d1.devices.example"}}, True),
        ({"serial": [format(DEVICE.serial, "x")]}, True),
        ({"serial": ["0x1234"]}, False),
        ({"fingerprint": [DEVICE.fingerprint_sha256]}, True),
        ({"fingerprint": ["00" * 32]}, False),
        ({"spki": [DEVICE.spki_sha256]}, True),
        ({"spki": ["sha256/" + DEVICE.spki_sha256]}, True),
        ({"spki": ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]}, False),
        ({"subject": {"CN": "device-1"}, "san": {"dns": "nope.example"}}, False),  # fields are ANDed
        ("any", True),
    ],
)
def test_each_matcher_allows_and_denies(client, expected):
    decision = allow_only(client).evaluate(DEVICE, "GET", "/api/x")
    assert decision.allowed is expected
    assert decision.reason == ("allowed" if expected else "client_not_allowed")


def test_san_types_are_not_confused():
    """A DNS SAN never satisfies a URI matcher, and the other way round (Envoy CVE-2022-21656 class)."""
    p = peer(dns=["spiffe://acme/device/1"])
    assert not allow_only({"san": {"uri": "spiffe://acme/device/1"}}).evaluate(p, "GET", "/api/").allowed
    q = peer(uris=["https://d1.devices.example"])
    assert not allow_only({"san": {"dns": "d1.devices.example"}}).evaluate(q, "GET", "/api/").allowed


def test_default_deny_and_first_match_wins():
    policy = compile_ok({"rules": [
        {"name": "no-admin", "paths": ["/admin/"], "action": "deny"},
        {"name": "reads", "methods": ["GET", "HEAD"], "paths": ["/api/"], "clients": "any"},
        {"name": "ops", "paths": ["/ops/*/status", "/deep/**"], "clients": [{"subject": {"OU": "ops"}}]},
    ]})
    assert policy.evaluate(DEVICE, "GET", "/api/items").rule == "reads"
    assert policy.evaluate(DEVICE, "GET", "/api").allowed  # '/api/' also covers '/api'
    assert policy.evaluate(DEVICE, "POST", "/api/items").reason == "no_matching_rule"
    assert policy.evaluate(DEVICE, "GET", "/admin/").reason == "denied_by_rule"
    assert policy.evaluate(DEVICE, "GET", "/admin").reason == "denied_by_rule"
    assert policy.evaluate(DEVICE, "GET", "/ops/a/status").reason == "client_not_allowed"
    assert policy.evaluate(DEVICE, "GET", "/ops/a/b/status").reason == "no_matching_rule"  # '*' is one segment
    assert policy.evaluate(DEVICE, "GET", "/deep/a/b/c").reason == "client_not_allowed"
    assert policy.evaluate(DEVICE, "GET", "/other").reason == "no_matching_rule"
    ops = peer({"CN": "ops-1", "OU": "ops"})
    assert policy.evaluate(ops, "GET", "/ops/x/status").allowed


def test_denylist_and_revocation_apply_before_rules():
    everyone = {"rules": [{"name": "all", "paths": ["/"], "clients": "any"}]}
    assert compile_ok(everyone).evaluate(DEVICE, "GET", "/").allowed
    for deny in ({"serials": [format(DEVICE.serial, "x")]}, {"fingerprints": [DEVICE.fingerprint_sha256]},
                 {"spki": [DEVICE.spki_sha256]}):
        assert compile_ok({**everyone, "deny": deny}).evaluate(DEVICE, "GET", "/").reason == "denylisted"
    revoked = compile_ok(everyone).with_trust([(DEVICE.issuer_dn, DEVICE.serial)])
    assert revoked.evaluate(DEVICE, "GET", "/").reason == "revoked"
    # the same serial from another issuer is a different certificate
    other = compile_ok(everyone).with_trust([("CN=Other Unit CA", DEVICE.serial)])
    assert other.evaluate(DEVICE, "GET", "/").allowed


def test_leaf_checks():
    everyone = compile_ok({"rules": [{"name": "all", "paths": ["/"], "clients": "any"}]})
    assert everyone.evaluate(peer(ekus=None), "GET", "/").reason == "client_auth_eku_missing"
    assert everyone.evaluate(peer(ekus=[X.EKU_SERVER]), "GET", "/").reason == "client_auth_eku_missing"
    assert everyone.evaluate(peer(is_ca=True, ekus=[X.EKU_CLIENT]), "GET", "/").reason == "leaf_is_ca"


def test_per_rule_body_limit():
    policy = compile_ok({"rules": [{"name": "up", "paths": ["/upload/"], "clients": "any", "max_body_size": "5M"}]})
    assert policy.evaluate(DEVICE, "POST", "/upload/x").max_body_size == 5 * 1024 * 1024


@pytest.mark.parametrize(
    ("raw", "key_path"),
    [
        ({"rules": []}, "policy.rules"),
        ({"rules": [{"paths": ["/"]}]}, "policy.rules[0].clients"),
        ({"rules": [{"paths": ["api"], "clients": "any"}]}, "policy.rules[0].paths[0]"),
        ({"rules": [{"paths": ["/"], "clients": "any", "methods": ["FETCH"]}]}, "policy.rules[0].methods"),
        ({"rules": [{"paths": ["/"], "clients": [{"subject": {"XX": "a"}}]}]}, "policy.rules[0].clients[0].subject.XX"),
        ({"rules": [{"paths": ["/"], "clients": [{"san": {"dns2": "a"}}]}]}, "policy.rules[0].clients[0].san.dns2"),
        ({"rules": [{"paths": ["/"], "clients": [{"san": {"ip": "not-an-ip"}}]}]},
         "policy.rules[0].clients[0].san.ip[0]"),
        ({"rules": [{"paths": ["/"], "clients": [{"fingerprint": "abc"}]}]},
         "policy.rules[0].clients[0].fingerprint[0]"),
        ({"rules": [{"paths": ["/"], "clients": [{"spki": "nope"}]}]}, "policy.rules[0].clients[0].spki[0]"),
        ({"rules": [{"paths": ["/"], "clients": "any", "action": "maybe"}]}, "policy.rules[0].action"),
        ({"rules": [{"paths": ["/"], "action": "deny", "clients": "any"}]}, "policy.rules[0].clients"),
        ({"rules": [{"paths": ["/"], "clients": "any", "colour": 1}]}, "policy.rules[0].colour"),
        ({"rules": [{"paths": ["/"], "clients": "any"}], "deny": {"serials": ["xyz"]}}, "policy.deny.serials[0]"),
        ({"rules": [{"name": "a", "paths": ["/"], "clients": "any"}, {"name": "a", "paths": ["/x"], "clients": "any"}]},
         "policy.rules[1].name"),
    ],
)
def test_bad_policies_name_the_key_path(raw, key_path):
    policy, problems = compile_policy(raw, "policy", parse_size)
    assert policy is None
    assert key_path in [p.key_path for p in problems], problems


def test_client_of_a_ca_no_longer_trusted_is_refused():
    """A reload that drops a CA refuses its clients on open connections too (the anchor is re-checked)."""
    everyone = compile_ok({"rules": [{"name": "all", "paths": ["/"], "clients": "any"}]})
    ca_fp = __import__("hashlib").sha256(CA.cert.public_bytes(Encoding.DER)).hexdigest()
    issued = X.issue_client({"CN": "anchored"}, CA)
    p = parse_peer(issued.cert.public_bytes(Encoding.DER), (CA.cert.public_bytes(Encoding.DER),))
    assert p.anchor_sha256 == ca_fp
    assert everyone.with_trust([], [ca_fp]).evaluate(p, "GET", "/").allowed
    other_fp = __import__("hashlib").sha256(OTHER_CA.cert.public_bytes(Encoding.DER)).hexdigest()
    assert everyone.with_trust([], [other_fp]).evaluate(p, "GET", "/").reason == "ca_not_trusted"


def test_chain_depth_limit():
    everyone = compile_ok({"rules": [{"name": "all", "paths": ["/"], "clients": "any"}]})
    issued = X.issue_client({"CN": "deep"}, CA)
    chain = (OTHER_CA.cert.public_bytes(Encoding.DER), CA.cert.public_bytes(Encoding.DER))
    p = parse_peer(issued.cert.public_bytes(Encoding.DER), chain)
    assert everyone.with_trust([], (), max_chain=2).evaluate(p, "GET", "/").allowed
    assert everyone.with_trust([], (), max_chain=1).evaluate(p, "GET", "/").reason == "chain_too_long"


def test_pinned_certificate_without_eku_is_judged_like_any_client():
    """judge_client delegates the trust checks to trust.certificate_refusal; the rest applies as usual."""
    pinned = X.issue_certificate({"CN": "pinned-app"}, ekus=None)  # self-signed, no EKU
    der = pinned.cert.public_bytes(Encoding.DER)
    fp = __import__("hashlib").sha256(der).hexdigest()
    p = parse_peer(der)
    everyone = compile_ok({"rules": [{"name": "all", "paths": ["/"], "clients": "any"}]})
    ca_fp = __import__("hashlib").sha256(CA.cert.public_bytes(Encoding.DER)).hexdigest()
    assert everyone.with_trust([], [ca_fp], pinned=[fp]).evaluate(p, "GET", "/").allowed
    assert everyone.with_trust([], [ca_fp]).evaluate(p, "GET", "/").reason == "client_auth_eku_missing"
    denied = compile_ok({"rules": [{"name": "all", "paths": ["/"], "clients": "any"}], "deny": {"fingerprints": [fp]}})
    assert denied.with_trust([], [ca_fp], pinned=[fp]).evaluate(p, "GET", "/").reason == "denylisted"
    revoked = everyone.with_trust([(p.issuer_dn, p.serial)], [ca_fp], pinned=[fp])
    assert revoked.evaluate(p, "GET", "/").reason == "revoked"
