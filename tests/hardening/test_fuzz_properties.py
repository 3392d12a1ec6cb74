"""Hypothesis properties: config loader, path normaliser, the proxy's head judging, policy, identity.

- config: any YAML-ish value (random, or a valid config with parts replaced) gives a
  ``Settings`` or a ``ConfigError``, never another exception; a ``Settings`` only holds usable
  values (finite, positive durations);
- paths: any bytes give a path or ``AmbiguousPath``; the normal form is a fixed point; a path
  under a denied prefix stays denied by the proxy's real judging however it is re-spelled with
  %XX of unreserved characters, dot-segments or repeated slashes;
- policy: first matching rule decides, checked against an independent reference matcher;
- identity: encode (proxy) -> verify (Django side) gives back exactly the certificate's fields.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import re
import string
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mtls_proxy.certs import parse_peer
from mtls_proxy.config import Settings, load_settings, settings_from_mapping
from mtls_proxy.errors import ConfigError
from mtls_proxy.identity import IdentityEncoder, IdentityOptions, RequestBinding, header_key, verify_identity
from mtls_proxy.paths import AmbiguousPath, normalize_path
from mtls_proxy.pki import x509 as X
from mtls_proxy.policy import compile_policy
from tests.hardening.headjudge import HeadJudge
from tests.support.proxy import base_config

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- config loader -----------------------------------------------------------------------------------------------

KNOWN_KEYS = [
    "listen", "upstream", "tls", "identity", "policy", "limits", "logging", "admin", "reload",
    "cert", "key", "client_ca", "client_certs", "x509_strict", "crl", "min_version", "handshake_timeout",
    "server_names", "session_tickets",
    "headers", "rfc9440", "rfc9440_chain", "signing_key_file", "rules", "deny", "name", "methods", "paths",
    "action", "clients", "max_body_size", "subject", "issuer", "san", "serial", "fingerprint", "spki",
    "dns", "uri", "email", "ip", "CN", "O", "OU", "serials", "fingerprints", "max_head_size", "head_timeout",
    "idle_timeout", "body_timeout", "upstream_connect_timeout", "upstream_read_timeout",
    "upstream_idle_timeout", "upstream_max_idle", "max_connections", "drain_timeout", "level", "format",
    "access_log", "watch", "debounce",
]
SPECIAL = [
    "any", "allow", "deny", "/api/", "/admin/", "/a/*/b", "/**", "1.2", "1.3", "10M", "1GiB", "500ms", "5m", "0",
    "-1", "127.0.0.1:8443", "[::1]:0", ":8443", "8443", "127.0.0.1:²", "127.0.0.1:٣", "unix:/tmp/x.sock",
    "unix:relative", "http://127.0.0.1:1", "http://[::1]:99999", "0x1a2b", "1a:2b", "zz", "sha256/" + "A" * 43 + "=",
    "10.0.0.0/8", "::1", "GET", "get", "PATCH", "BREW", "debug", "json", "off", ".nan", "inf",
]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**13), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(SPECIAL),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8), st.integers(-3, 3), st.booleans(), st.none())
yamlish = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5), max_leaves=30
)


@pytest.fixture(scope="module")
def valid_config(tmp_path_factory, pki) -> tuple[dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("fuzzcfg")
    cfg = base_config(pki, "unix:/tmp/up.sock", 8443)
    cfg["tls"]["crl"] = str(pki.crl("fuzz-crl.pem", []))
    cfg["policy"] = {"deny": {"serials": ["0x1"]}, "rules": [
        {"name": "no-admin", "paths": ["/admin/"], "action": "deny"},
        {"name": "api", "paths": ["/api/", "/v*/x"], "methods": ["GET", "POST"],
         "clients": [{"subject": {"CN": "d-*"}, "san": {"dns": ["*.x"], "ip": ["10.0.0.0/8"]}}, "any"]},
    ]}
    cfg["limits"] = {"head_timeout": "5s", "max_body_size": "1M"}
    settings_from_mapping(cfg, root / "c.yaml")  # the base is valid
    return cfg, root / "c.yaml"


def _check_settings(s: Settings) -> None:
    lim = s.limits
    for name in ("head_timeout", "idle_timeout", "body_timeout", "upstream_connect_timeout",
                 "upstream_read_timeout", "upstream_idle_timeout", "drain_timeout"):
        v = getattr(lim, name)
        assert isinstance(v, float) and math.isfinite(v) and v > 0, (name, v)
    assert math.isfinite(s.tls.handshake_timeout) and s.tls.handshake_timeout > 0
    for name in ("max_head_size", "max_body_size", "upstream_max_idle", "max_connections"):
        v = getattr(lim, name)
        assert isinstance(v, int) and not isinstance(v, bool) and v >= 0, (name, v)
    for a in s.listen:
        assert 0 <= a.port <= 65535


def _load(raw: Any, source: Path) -> None:
    try:
        s = settings_from_mapping(raw, source)
    except ConfigError as exc:
        assert exc.problems  # every refusal says what is wrong
        return
    _check_settings(s)


@FUZZ
@given(raw=yamlish)
def test_any_value_gives_settings_or_config_error(tmp_path_factory, raw):
    _load(raw, Path("/nonexistent/config.yaml"))


@FUZZ
@given(data=st.data())
@example(data=None)  # the valid base itself
def test_valid_config_with_parts_replaced(valid_config, data):
    base, source = valid_config
    cfg = yaml.safe_load(yaml.safe_dump(base))  # a deep copy
    if data is not None:
        for _ in range(data.draw(st.integers(1, 3))):
            node = cfg
            path = data.draw(st.lists(st.sampled_from([*KNOWN_KEYS, 0, 1]), min_size=1, max_size=4))
            for k in path[:-1]:
                nxt = node.get(k) if isinstance(node, dict) else (node[k] if isinstance(node, list) and
                                                                  isinstance(k, int) and k < len(node) else None)
                if not isinstance(nxt, (dict, list)):
                    break
                node = nxt
            last = path[-1]
            if isinstance(node, dict):
                if data.draw(st.booleans()) and last in node:
                    del node[last]
                else:
                    node[last] = data.draw(yamlish)
            elif isinstance(node, list) and isinstance(last, int) and last < len(node):
                node[last] = data.draw(yamlish)
    _load(cfg, source)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e400"])
@pytest.mark.parametrize("key", ["head_timeout", "drain_timeout"])
def test_non_finite_durations_are_config_errors(valid_config, key, value):
    base, source = valid_config
    cfg = yaml.safe_load(yaml.safe_dump(base))
    cfg["limits"][key] = yaml.safe_load(value)
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(cfg, source)
    assert [p.key_path for p in info.value.problems] == [f"limits.{key}"]


@pytest.mark.parametrize("port", ["²", "¹²³", "٣٣"])
def test_unicode_digit_ports_are_config_errors(valid_config, port):
    base, source = valid_config
    cfg = yaml.safe_load(yaml.safe_dump(base))
    cfg["listen"] = f"127.0.0.1:{port}"
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(cfg, source)
    assert [p.key_path for p in info.value.problems] == ["listen"]


@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
@example(text="[" * 3000 + "]" * 3000)
@example(text="a: &a [*a]")
@example(text="!!python/object:os.system {}")
@example(text="listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n")
def test_any_file_text_gives_settings_or_config_error(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "fuzz-config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        s = load_settings(path)
    except ConfigError as exc:
        assert exc.problems
        return
    _check_settings(s)


# --- path normaliser ---------------------------------------------------------------------------------------------

UNRESERVED = string.ascii_letters + string.digits + "-._~"
segment_text = st.text(alphabet=UNRESERVED + "!$&'()*+,;=:@", min_size=1, max_size=8).filter(
    lambda s: s not in (".", ".."))
raw_targets = st.one_of(
    st.binary(max_size=60).map(lambda b: b"/" + b),
    st.lists(st.sampled_from([b"/", b".", b"..", b"%2e", b"%2E", b"%2f", b"%5c", b"%25", b"%00", b"%C0%AE",
                              b"%e2%80%ae", b"admin", b"api", b";", b"?", b"#", b"\\", b"%", b"%g", b"a"]),
             max_size=12).map(lambda parts: b"/" + b"".join(parts)),
)


@FUZZ
@given(raw=raw_targets)
def test_normalizer_total_and_idempotent(raw):
    try:
        out = normalize_path(raw)
    except AmbiguousPath as exc:
        assert exc.reason in {"not_origin_form", "control_character", "backslash", "fragment",
                              "bad_percent_encoding", "encoded_separator", "invalid_utf8"}
        return
    assert out.startswith("/") and "//" not in out
    assert "/./" not in out and "/../" not in out and not out.endswith(("/.", "/.."))
    # a fixed point: the normal form, spelled as a target again, normalises to itself
    assert normalize_path(quote(out, safe="/").encode("ascii")) == out
    if all(c in UNRESERVED + "/!$&'()*+,;=:@" for c in out):
        assert normalize_path(out.encode("ascii")) == out  # normalize(normalize(p)) == normalize(p)


def _respell(path: str, data: st.DataObject) -> str:
    """Re-spell ``path`` without changing where it resolves: %XX of unreserved characters (either hex
    case), ``./`` segments, ``x/../`` detours and doubled slashes."""
    out = []
    for seg in path.split("/")[1:]:
        chars = []
        for c in seg:
            if data.draw(st.integers(0, 3)) == 0:
                h = f"{ord(c):02x}"
                chars.append("%" + (h.upper() if data.draw(st.booleans()) else h))
            else:
                chars.append(c)
        prefix = data.draw(st.sampled_from(["", "./", "zz/../", "/", "%2e/", "%7a%7A/%2E%2e/"]))
        out.append(prefix + "".join(chars))
    return "/" + "/".join(out)


@pytest.fixture(scope="module")
def judge(tmp_path_factory, pki):
    j = HeadJudge(tmp_path_factory.mktemp("judge"), pki=pki)
    yield j
    j.close()


def _head(target: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode("ascii")


@FUZZ
@given(segs=st.lists(segment_text, min_size=0, max_size=4), trailing=st.booleans(), data=st.data())
def test_denied_prefix_stays_denied_however_respelled(judge, segs, trailing, data):
    path = "/admin/" + "/".join(segs) + ("/" if trailing and segs else "")
    assert normalize_path(path.encode()) == path
    target = _respell(path, data)
    assert normalize_path(target.encode()) == path
    (ex,) = judge.judge(_head(target)).exchanges
    assert ex.refusal is not None, target
    assert (ex.refusal.status, ex.refusal.reason) == (403, "denied_by_rule"), target
    assert ex.upstream_head == b""


@FUZZ
@given(segs=st.lists(segment_text, min_size=1, max_size=4), data=st.data())
def test_allowed_prefix_respelled_is_judged_on_both_readings(judge, segs, data):
    """Under /api/ a re-spelling resolves to an allowed path; Django routes the target as sent (no
    dot-segment removal), so it is forwarded (byte for byte) exactly when that reading is allowed too."""
    path = "/api/" + "/".join(segs)
    target = _respell(path, data)
    assert normalize_path(target.encode()) == path
    (ex,) = judge.judge(_head(target)).exchanges
    routed = unquote(target)
    if routed.startswith(("/api/", "/ws/")):
        assert ex.refusal is None, (target, ex.refusal)
        assert ex.upstream_head.startswith(b"GET " + target.encode() + b" HTTP/1.1\r\n")
    else:
        assert ex.refusal is not None, target
        assert (ex.refusal.status, ex.refusal.reason) == (403, "no_matching_rule"), target


@FUZZ
@given(raw=st.binary(max_size=400))
@example(raw=b"GET /admin/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
@example(raw=b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nX-Client-Cert-Subject: CN=admin\r\n"
             b"X_Client_Cert_Subject: CN=admin\r\n\r\n")
def test_head_judging_never_raises_and_never_allows_admin(judge, raw):
    prefix = b"GET /api/echo HTTP/1.1\r\nHost: localhost\r\n"
    for data in (raw, prefix + raw):
        judged = judge.judge(data)  # must not raise
        for ex in judged.exchanges:
            if ex.refusal is None:
                path = normalize_path(ex.target.partition(b"?")[0])
                assert not path.startswith("/admin"), ex.target
                head = ex.upstream_head
                assert head.startswith(ex.method + b" " + ex.target + b" HTTP/1.1\r\n")
                lines = head.split(b"\r\n")
                names = [ln.split(b":", 1)[0].lower().replace(b"_", b"-") for ln in lines[1:] if ln]
                # identity headers appear once each: the proxy's own (clients' copies were stripped)
                assert names.count(b"x-client-cert-subject") == 1
                assert names.count(b"x-client-cert-signature") == 1
                assert b"CN=admin" not in head
                assert names.count(b"content-length") + names.count(b"transfer-encoding") <= 1


# --- policy matcher ----------------------------------------------------------------------------------------------

SEGS = ["a", "b", "api", "admin", "x.y", "v1"]
pattern_st = st.builds(
    lambda parts, kind: "/" + "/".join(parts) + ("/" if kind == "prefix" else ""),
    st.lists(st.sampled_from([*SEGS, "*", "**", "?", "a*", "*b"]), min_size=0, max_size=3),
    st.sampled_from(["prefix", "exact"]),
)
rule_st = st.fixed_dictionaries(
    {"paths": st.lists(pattern_st, min_size=1, max_size=2), "action": st.sampled_from(["allow", "deny"])},
    optional={"methods": st.lists(st.sampled_from(["GET", "POST", "DELETE"]), min_size=1, max_size=2, unique=True)},
)
req_path_st = st.lists(st.sampled_from([*SEGS, "c", "ab"]), max_size=4).flatmap(
    lambda parts: st.sampled_from(["/" + "/".join(parts), "/" + "/".join(parts) + "/"]))


def _ref_matches(pattern: str, path: str) -> bool:
    """An independent reading of the documented path syntax: a path with one trailing slash is also
    judged without it (prefixes already match both)."""
    return _ref_pattern(pattern, path) or (len(path) > 1 and path.endswith("/") and _ref_pattern(pattern, path[:-1]))


def _ref_pattern(pattern: str, path: str) -> bool:
    if "*" in pattern or "?" in pattern:
        rx = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                rx += ".*"
                i += 2
            elif pattern[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pattern[i])
                i += 1
        return re.fullmatch(rx, path, re.DOTALL) is not None
    if pattern.endswith("/"):
        return path.startswith(pattern) or (len(pattern) > 1 and path == pattern[:-1])
    return path == pattern


@FUZZ
@given(rules=st.lists(rule_st, min_size=1, max_size=5), path=req_path_st,
       method=st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PUT"]))
def test_policy_first_match_against_reference(judge, rules, path, method):
    raw = {"rules": [{"name": f"r{i}", **r, **({"clients": "any"} if r["action"] == "allow" else {})}
                     for i, r in enumerate(rules)]}
    policy, problems = compile_policy(raw)
    assert problems == [] and policy is not None
    decision = policy.evaluate_rules(judge.peer, method, path)
    assert policy.evaluate_rules(judge.peer, method, path) == decision  # pure
    expected = ("-", "no_matching_rule", False)
    for i, r in enumerate(rules):
        if "methods" in r and method not in r["methods"] + (["HEAD"] if "GET" in r["methods"] else []):
            continue  # GET also matches HEAD
        if any(_ref_matches(p, path) for p in r["paths"]):
            deny = r["action"] == "deny"
            expected = (f"r{i}", "denied_by_rule" if deny else "allowed", not deny)
            break
    assert (decision.rule, decision.reason, decision.allowed) == expected


# --- identity header round trip -----------------------------------------------------------------------------------

SIGNING_KEY = b"s" * 40
dn_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=16)
dns_label = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=10)
ascii_print = st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=1, max_size=20)
_FIXED_KEY = X.generate_key()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cn=dn_text, org=st.lists(dn_text, max_size=1), ous=st.lists(dn_text, max_size=3),
    dns=st.lists(st.lists(dns_label, min_size=1, max_size=3).map(".".join), max_size=2),
    uris=st.lists(ascii_print.map(lambda s: "urn:x:" + s), max_size=2),
    emails=st.lists(st.tuples(dns_label, dns_label).map(lambda t: f"{t[0]}@{t[1]}.example"), max_size=2),
    ips=st.lists(st.ip_addresses(), max_size=2),
    serial=st.integers(1, 2**159 - 1), method=st.sampled_from(["GET", "POST", "delete"]),
)
def test_identity_round_trip(pki, cn, org, ous, dns, uris, emails, ips, serial, method):
    attrs = [x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]
    attrs += [x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, o) for o in org]
    attrs += [x509.NameAttribute(x509.NameOID.ORGANIZATIONAL_UNIT_NAME, u) for u in ous]
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.UniformResourceIdentifier(u) for u in uris] + [x509.RFC822Name(e) for e in emails]
    sans += [x509.IPAddress(ipaddress.ip_address(str(i))) for i in ips]
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(pki.ca.cert.subject)
         .public_key(_FIXED_KEY.public_key()).serial_number(serial)
         .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1, seconds=0.5)))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    der = b.sign(pki.ca.key, hashes.SHA256()).public_bytes(Encoding.DER)
    peer = parse_peer(der)
    enc = IdentityEncoder(IdentityOptions(signing_key=SIGNING_KEY, rfc9440=True))
    pairs = enc.request_headers(enc.connection_headers(peer), method=method.encode(), target=b"/api/x?y=%20",
                                host=b"localhost", content_length=None, chunked=False)
    for _, v in pairs:
        assert all(0x21 <= c < 0x7F for c in v)  # printable ASCII, nothing HTTP could split or trim
    headers = {header_key(n): v.decode("ascii") for n, v in pairs}
    request = RequestBinding(method.encode(), b"/api/x?y=%20", b"localhost", b"none")
    cert = verify_identity(headers, request=request, keys=SIGNING_KEY, now=time.time())
    assert cert.subject == peer.subject_dn
    assert cert.issuer == peer.issuer_dn
    assert cert.serial == format(serial, "x")
    assert cert.fingerprint == peer.fingerprint_sha256
    assert cert.spki == peer.spki_sha256
    assert cert.not_after == peer.not_after.replace(microsecond=0)
    assert (cert.san_dns, cert.san_uri, cert.san_email, cert.san_ip) == (
        peer.san_dns, peer.san_uri, peer.san_email, peer.san_ip)
    assert cert.der == der
    # the attributes Django reads are the ones the policy matched on, in the certificate's order
    assert cert.subject_attributes == peer.subject
    assert cert.common_name == peer.common_name == cn
