"""Policy compilation and rule evaluation, without sockets (the policy module is pure).

The certificate's standing (deny-list, CRLs, expiry, anchor, depth) is judged by judge(): test_judge.py."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from mtls_proxy.certs import PeerIdentity, parse_peer
from mtls_proxy.config import parse_size
from mtls_proxy.pki import x509 as X
from mtls_proxy.policy import Policy, compile_policy

CA = X.issue_ca({"CN": "Unit CA", "O": "Acme"})


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
    decision = allow_only(client).evaluate_rules(DEVICE, "GET", "/api/x")
    assert decision.allowed is expected
    assert decision.reason == ("allowed" if expected else "client_not_allowed")


def test_san_types_are_not_confused():
    """A DNS SAN never satisfies a URI matcher, and the other way round (Envoy CVE-2022-21656 class)."""
    p = peer(dns=["spiffe://acme/device/1"])
    assert not allow_only({"san": {"uri": "spiffe://acme/device/1"}}).evaluate_rules(p, "GET", "/api/").allowed
    q = peer(uris=["https://d1.devices.example"])
    assert not allow_only({"san": {"dns": "d1.devices.example"}}).evaluate_rules(q, "GET", "/api/").allowed


def test_default_deny_and_first_match_wins():
    policy = compile_ok({"rules": [
        {"name": "no-admin", "paths": ["/admin/"], "action": "deny"},
        {"name": "reads", "methods": ["GET", "HEAD"], "paths": ["/api/"], "clients": "any"},
        {"name": "ops", "paths": ["/ops/*/status", "/deep/**"], "clients": [{"subject": {"OU": "ops"}}]},
    ]})
    assert policy.evaluate_rules(DEVICE, "GET", "/api/items").rule == "reads"
    assert policy.evaluate_rules(DEVICE, "GET", "/api").allowed  # '/api/' also covers '/api'
    assert policy.evaluate_rules(DEVICE, "POST", "/api/items").reason == "no_matching_rule"
    assert policy.evaluate_rules(DEVICE, "GET", "/admin/").reason == "denied_by_rule"
    assert policy.evaluate_rules(DEVICE, "GET", "/admin").reason == "denied_by_rule"
    assert policy.evaluate_rules(DEVICE, "GET", "/ops/a/status").reason == "client_not_allowed"
    assert policy.evaluate_rules(DEVICE, "GET", "/ops/a/b/status").reason == "no_matching_rule"  # '*' is one segment
    assert policy.evaluate_rules(DEVICE, "GET", "/deep/a/b/c").reason == "client_not_allowed"
    assert policy.evaluate_rules(DEVICE, "GET", "/other").reason == "no_matching_rule"
    ops = peer({"CN": "ops-1", "OU": "ops"})
    assert policy.evaluate_rules(ops, "GET", "/ops/x/status").allowed


def test_per_rule_body_limit():
    policy = compile_ok({"rules": [{"name": "up", "paths": ["/upload/"], "clients": "any", "max_body_size": "5M"}]})
    assert policy.evaluate_rules(DEVICE, "POST", "/upload/x").max_body_size == 5 * 1024 * 1024


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


def test_denylist_is_compiled_from_every_form():
    everyone = {"rules": [{"name": "all", "paths": ["/"], "clients": "any"}]}
    assert not compile_ok(everyone).is_denylisted(DEVICE)
    for deny in ({"serials": [format(DEVICE.serial, "x")]}, {"fingerprints": [DEVICE.fingerprint_sha256]},
                 {"spki": [DEVICE.spki_sha256]}):
        assert compile_ok({**everyone, "deny": deny}).is_denylisted(DEVICE)


def test_get_also_matches_head_and_nothing_else():
    """Django serves HEAD with the GET view: a deny for GET must cover HEAD, and an allow for GET too."""
    policy = compile_ok({"rules": [
        {"name": "no-export", "methods": ["GET"], "paths": ["/api/export"], "action": "deny"},
        {"name": "reads", "methods": ["get"], "paths": ["/api/"], "clients": "any"},
    ]})
    assert policy.rules[0].methods == frozenset({"GET", "HEAD"})
    assert policy.evaluate_rules(DEVICE, "HEAD", "/api/export").reason == "denied_by_rule"
    assert policy.evaluate_rules(DEVICE, "HEAD", "/api/items").reason == "allowed"
    assert policy.evaluate_rules(DEVICE, "POST", "/api/items").reason == "no_matching_rule"
    head_only = compile_ok({"rules": [{"name": "h", "methods": ["HEAD"], "paths": ["/"], "clients": "any"}]})
    assert head_only.evaluate_rules(DEVICE, "GET", "/x").reason == "no_matching_rule"  # not the other way round


@pytest.mark.parametrize(("pattern", "path", "expected"), [
    ("/api/secret", "/api/secret", True),
    ("/api/secret", "/api/secret/", True),  # the trailing-slash form of an exact path
    ("/api/secret", "/api/secret/x", False),
    ("/api/secret", "/api/secre", False),
    ("/api/*/delete", "/api/1/delete/", True),  # globs too
    ("/api/*/delete", "/api/1/delete/x", False),
    ("/api/?", "/api//", False),  # one slash is taken off, not more
    ("/api/secret/", "/api/secret", True),  # the reverse: a prefix already matches without its slash
    ("/", "/", True),
])
def test_trailing_slash_form(pattern, path, expected):
    policy = compile_ok({"rules": [{"name": "no", "paths": [pattern], "action": "deny"},
                                   {"name": "rest", "paths": ["/"], "clients": "any"}]})
    assert (policy.evaluate_rules(DEVICE, "GET", path).rule == "no") is expected
