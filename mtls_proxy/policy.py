"""Access policy: rules compiled once at load, judged per request by a pure function.

Default deny. The deny-list (serials, certificate fingerprints, SPKI pins) is checked
first (by :func:`mtls_proxy.judging.judge`), then the first rule whose method and
path match decides. A rule either denies, or allows the clients
that satisfy any one of its ``clients`` matchers (all fields of one matcher must
hold). ``clients: any`` means every client whose certificate chained to a configured
client CA or is a pinned client certificate (the TLS layer already proved that);
``clients: none`` admits clients that presented no certificate (a ``client_auth: optional``
listener, e.g. for enrollment), and nothing else does.

Path patterns are matched against :func:`mtls_proxy.paths.normalize_path` output:
``/api/`` (ends with ``/``) is a prefix and also matches ``/api``; a pattern with
``*`` or ``?`` is a glob (``*`` and ``?`` within one segment, ``**`` across segments,
matched in linear time by :mod:`mtls_proxy.globs`); anything else is an exact path.
An exact path or glob also matches the path with one trailing slash (``/api/x`` matches
``/api/x/``), because Django may route both to the same view (``APPEND_SLASH``, or a
pattern that takes either): a deny on ``/api/x`` must not be dodged by a slash. The
reverse already holds for prefixes (``/api/x/`` matches ``/api/x``). ``methods: [GET]``
also matches HEAD, because Django answers HEAD with the GET view. No asyncio or I/O
here, so it is tested without sockets.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from mtls_proxy.certs import PeerIdentity
from mtls_proxy.errors import ConfigProblem
from mtls_proxy.globs import Glob, is_glob

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
SUBJECT_ATTRIBUTES = ("CN", "O", "OU", "C", "L", "ST", "emailAddress", "serialNumber")
SAN_TYPES = ("dns", "uri", "email", "ip")


class Decision(NamedTuple):
    """What the rules say about one request (a tuple: built on every request)."""

    allowed: bool
    rule: str
    reason: str
    max_body_size: int | None = None


@dataclass(frozen=True, slots=True)
class ValueMatcher:
    """Exact values plus glob patterns, compiled once."""

    exact: frozenset[str]
    globs: tuple[Glob, ...]
    fold_case: bool = False

    @classmethod
    def compile(
        cls, values: Iterable[str], *, separator: str | None = None, fold_case: bool = False
    ) -> ValueMatcher:
        """``separator``: the character ``*`` and ``?`` do not match (``.`` for DNS names), or none."""
        exact: set[str] = set()
        globs: list[Glob] = []
        for v in values:
            v = v.lower() if fold_case else v
            if is_glob(v):
                globs.append(Glob(v, separator))
            else:
                exact.add(v)
        return cls(frozenset(exact), tuple(globs), fold_case)

    def matches_any(self, candidates: Iterable[str]) -> bool:
        for c in candidates:
            c = c.lower() if self.fold_case else c
            if c in self.exact or any(g.fullmatch(c) for g in self.globs):
                return True
        return False


@dataclass(frozen=True, slots=True)
class ClientMatcher:
    """One ``clients`` entry; every field given must match (AND); values of a field are OR."""

    any_client: bool = False
    #: ``none``: a client that presented no certificate (only on a ``client_auth: optional`` listener)
    no_client: bool = False
    subject: tuple[tuple[str, ValueMatcher], ...] = ()
    issuer: tuple[tuple[str, ValueMatcher], ...] = ()
    san: tuple[tuple[str, ValueMatcher], ...] = ()
    ip_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    serials: frozenset[int] = frozenset()
    fingerprints: frozenset[str] = frozenset()
    spki: frozenset[str] = frozenset()

    def matches(self, peer: PeerIdentity | None) -> bool:
        if peer is None:
            return self.no_client
        if self.no_client:
            return False
        if self.any_client:
            return True
        for attr, m in self.subject:
            if not m.matches_any(peer.subject.get(attr, ())):
                return False
        for attr, m in self.issuer:
            if not m.matches_any(peer.issuer.get(attr, ())):
                return False
        for kind, m in self.san:
            if not m.matches_any(_peer_sans(peer, kind)):
                return False
        if self.ip_networks and not any(
            ipaddress.ip_address(ip) in net for ip in peer.san_ip for net in self.ip_networks
        ):
            return False
        if self.serials and peer.serial not in self.serials:
            return False
        if self.fingerprints and peer.fingerprint_sha256 not in self.fingerprints:
            return False
        return not (self.spki and peer.spki_sha256 not in self.spki)


def _peer_sans(peer: PeerIdentity, kind: str) -> tuple[str, ...]:
    if kind == "dns":
        return peer.san_dns
    if kind == "uri":
        return peer.san_uri
    if kind == "email":
        return peer.san_email
    return peer.san_ip


@dataclass(frozen=True, slots=True)
class PathMatcher:
    exact: frozenset[str]
    prefixes: tuple[str, ...]
    globs: tuple[Glob, ...]

    def matches(self, path: str) -> bool:
        """The path, or the path without one trailing slash, matches a pattern."""
        return self._matches(path) or (len(path) > 1 and path.endswith("/") and self._matches(path[:-1]))

    def _matches(self, path: str) -> bool:
        if path in self.exact:
            return True
        for p in self.prefixes:
            if path.startswith(p):
                return True
        return any(g.fullmatch(path) for g in self.globs)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    methods: frozenset[str] | None
    paths: PathMatcher | None
    deny: bool
    clients: tuple[ClientMatcher, ...]
    max_body_size: int | None = None

    def applies(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.paths is None or self.paths.matches(path)


@dataclass(frozen=True)
class Policy:
    """The compiled ``policy`` section: rules in order and the deny-list.

    It judges only what the configuration says; the certificate's standing (chain, CRLs,
    expiry, trust anchor) and the request's framing are judged around it by
    :func:`mtls_proxy.judging.judge`, the one function production calls per request.
    """

    rules: tuple[Rule, ...]
    deny_serials: frozenset[int] = frozenset()
    deny_fingerprints: frozenset[str] = frozenset()
    deny_spki: frozenset[str] = frozenset()

    def is_denylisted(self, peer: PeerIdentity) -> bool:
        return (
            peer.serial in self.deny_serials
            or peer.fingerprint_sha256 in self.deny_fingerprints
            or peer.spki_sha256 in self.deny_spki
        )

    def evaluate_rules(self, peer: PeerIdentity | None, method: str, path: str) -> Decision:
        """The first rule whose method and path match decides; none matching: deny. Pure.

        ``peer`` None is a client without a certificate: only a ``clients: none`` matcher admits it.
        """
        for rule in self.rules:
            if rule.applies(method, path):
                if rule.deny:
                    return Decision(False, rule.name, "denied_by_rule")
                for matcher in rule.clients:
                    if matcher.matches(peer):
                        return Decision(True, rule.name, "allowed", rule.max_body_size)
                return Decision(False, rule.name, "client_cert_required" if peer is None else "client_not_allowed")
        return Decision(False, "-", "no_matching_rule")


# --- compilation -----------------------------------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.items: list[ConfigProblem] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(ConfigProblem(path, message))


def _str_list(value: Any, path: str, problems: _Problems) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        return [str(v) for v in value]
    problems.add(path, "expected a string or a list of strings")
    return []


def parse_serial(value: str) -> int:
    """Serials are written in hex (``0x1a2b``, ``1a:2b`` or ``1a2b``), as openssl and our logs print them."""
    text = value.strip().lower().replace(":", "")
    text = text[2:] if text.startswith("0x") else text
    return int(text, 16)


def _serials(value: Any, path: str, problems: _Problems) -> frozenset[int]:
    out: set[int] = set()
    for i, s in enumerate(_str_list(value, path, problems)):
        try:
            out.add(parse_serial(s))
        except ValueError:
            problems.add(f"{path}[{i}]", f"{s!r} is not a hexadecimal serial")
    return frozenset(out)


def _fingerprints(value: Any, path: str, problems: _Problems) -> frozenset[str]:
    out: set[str] = set()
    for i, s in enumerate(_str_list(value, path, problems)):
        fp = s.lower().replace(":", "")
        if not re.fullmatch(r"[0-9a-f]{64}", fp):
            problems.add(f"{path}[{i}]", f"{s!r} is not a SHA-256 fingerprint (64 hex digits)")
        out.add(fp)
    return frozenset(out)


def _pins(value: Any, path: str, problems: _Problems) -> frozenset[str]:
    import base64
    import binascii

    out: set[str] = set()
    for i, s in enumerate(_str_list(value, path, problems)):
        pin = s.removeprefix("sha256/")
        try:
            ok = len(base64.b64decode(pin, validate=True)) == 32
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            problems.add(f"{path}[{i}]", f"{s!r} is not a base64 SHA-256 SPKI pin")
        out.add(pin)
    return frozenset(out)


def _name_matchers(value: Any, path: str, problems: _Problems) -> tuple[tuple[str, ValueMatcher], ...]:
    if not isinstance(value, dict):
        problems.add(path, "expected a mapping of attribute -> value(s), e.g. {CN: 'device-*'}")
        return ()
    out: list[tuple[str, ValueMatcher]] = []
    for attr, v in value.items():
        if attr not in SUBJECT_ATTRIBUTES:
            problems.add(f"{path}.{attr}", f"unknown attribute; use one of {', '.join(SUBJECT_ATTRIBUTES)}")
            continue
        out.append((attr, ValueMatcher.compile(_str_list(v, f"{path}.{attr}", problems))))
    return tuple(out)


_CLIENT_KEYS = {"subject", "issuer", "san", "serial", "fingerprint", "spki"}


def _compile_client(raw: Any, path: str, problems: _Problems) -> ClientMatcher | None:
    if raw == "any":
        return ClientMatcher(any_client=True)
    if raw == "none":
        return ClientMatcher(no_client=True)
    if not isinstance(raw, dict) or not raw:
        problems.add(path, "expected 'any', 'none' or a mapping with subject/issuer/san/serial/fingerprint/spki")
        return None
    for k in raw:
        if k not in _CLIENT_KEYS:
            problems.add(f"{path}.{k}", f"unknown key; allowed: {', '.join(sorted(_CLIENT_KEYS))}")
    san: list[tuple[str, ValueMatcher]] = []
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    raw_san = raw.get("san", {})
    if not isinstance(raw_san, dict):
        problems.add(f"{path}.san", "expected a mapping of dns/uri/email/ip -> value(s)")
        raw_san = {}
    for kind, v in raw_san.items():
        kpath = f"{path}.san.{kind}"
        if kind not in SAN_TYPES:
            problems.add(kpath, f"unknown SAN type; use one of {', '.join(SAN_TYPES)}")
            continue
        values = _str_list(v, kpath, problems)
        if kind == "ip":
            for i, s in enumerate(values):
                try:
                    networks.append(ipaddress.ip_network(s, strict=False))
                except ValueError:
                    problems.add(f"{kpath}[{i}]", f"{s!r} is not an IP address or network")
        else:
            separator = "." if kind == "dns" else None
            san.append((kind, ValueMatcher.compile(values, separator=separator, fold_case=kind != "uri")))
    return ClientMatcher(
        subject=_name_matchers(raw["subject"], f"{path}.subject", problems) if "subject" in raw else (),
        issuer=_name_matchers(raw["issuer"], f"{path}.issuer", problems) if "issuer" in raw else (),
        san=tuple(san),
        ip_networks=tuple(networks),
        serials=_serials(raw["serial"], f"{path}.serial", problems) if "serial" in raw else frozenset(),
        fingerprints=_fingerprints(raw["fingerprint"], f"{path}.fingerprint", problems)
        if "fingerprint" in raw
        else frozenset(),
        spki=_pins(raw["spki"], f"{path}.spki", problems) if "spki" in raw else frozenset(),
    )


def _compile_paths(raw: Any, path: str, problems: _Problems) -> PathMatcher:
    exact: set[str] = set()
    prefixes: list[str] = []
    globs: list[Glob] = []
    for i, p in enumerate(_str_list(raw, path, problems)):
        if not p.startswith("/"):
            problems.add(f"{path}[{i}]", f"{p!r} must start with '/'")
            continue
        if is_glob(p):
            globs.append(Glob(p, "/"))
        elif p.endswith("/"):
            prefixes.append(p)
            if len(p) > 1:
                exact.add(p[:-1])
        else:
            exact.add(p)
    return PathMatcher(frozenset(exact), tuple(prefixes), tuple(globs))


_RULE_KEYS = {"name", "methods", "paths", "action", "clients", "max_body_size"}


def compile_policy(
    raw: Any, key_path: str = "policy", parse_size: Callable[[Any], int] | None = None
) -> tuple[Policy | None, list[ConfigProblem]]:
    """Compile the ``policy`` section; returns the policy (None if unusable) and every problem found."""
    problems = _Problems()
    if not isinstance(raw, dict):
        problems.add(key_path, "expected a mapping with 'rules' (and optionally 'deny')")
        return None, problems.items
    for k in raw:
        if k not in ("rules", "deny"):
            problems.add(f"{key_path}.{k}", "unknown key; allowed: deny, rules")
    deny_raw = raw.get("deny") or {}
    deny_serials: frozenset[int] = frozenset()
    deny_fps: frozenset[str] = frozenset()
    deny_spki: frozenset[str] = frozenset()
    if not isinstance(deny_raw, Mapping):
        problems.add(f"{key_path}.deny", "expected a mapping with serials/fingerprints/spki")
    else:
        for k in deny_raw:
            if k not in ("serials", "fingerprints", "spki"):
                problems.add(f"{key_path}.deny.{k}", "unknown key; allowed: serials, fingerprints, spki")
        deny_serials = _serials(deny_raw.get("serials", []), f"{key_path}.deny.serials", problems)
        deny_fps = _fingerprints(deny_raw.get("fingerprints", []), f"{key_path}.deny.fingerprints", problems)
        deny_spki = _pins(deny_raw.get("spki", []), f"{key_path}.deny.spki", problems)
    rules_raw = raw.get("rules")
    rules: list[Rule] = []
    if not isinstance(rules_raw, list) or not rules_raw:
        problems.add(f"{key_path}.rules", "expected a non-empty list of rules (the default is to deny everything)")
        rules_raw = []
    names: set[str] = set()
    for i, r in enumerate(rules_raw):
        rpath = f"{key_path}.rules[{i}]"
        if not isinstance(r, dict):
            problems.add(rpath, "expected a mapping")
            continue
        for k in r:
            if k not in _RULE_KEYS:
                problems.add(f"{rpath}.{k}", f"unknown key; allowed: {', '.join(sorted(_RULE_KEYS))}")
        name = str(r.get("name", f"rule{i}"))
        if name in names:
            problems.add(f"{rpath}.name", f"duplicate rule name {name!r}")
        names.add(name)
        methods: frozenset[str] | None = None
        if "methods" in r:
            ms = [m.upper() for m in _str_list(r["methods"], f"{rpath}.methods", problems)]
            for m in ms:
                if m not in HTTP_METHODS:
                    problems.add(f"{rpath}.methods", f"unknown HTTP method {m!r}")
            methods = frozenset(ms) | ({"HEAD"} if "GET" in ms else set())  # Django serves HEAD with GET
        paths = _compile_paths(r["paths"], f"{rpath}.paths", problems) if "paths" in r else None
        action = r.get("action", "allow")
        if action not in ("allow", "deny"):
            problems.add(f"{rpath}.action", "expected 'allow' or 'deny'")
        clients: list[ClientMatcher] = []
        if action == "allow":
            raw_clients = r.get("clients")
            if raw_clients is None:
                problems.add(f"{rpath}.clients", "an allow rule needs 'clients' ('any' or a list of matchers)")
                raw_clients = []
            if raw_clients in ("any", "none"):
                raw_clients = [raw_clients]
            if not isinstance(raw_clients, list):
                problems.add(f"{rpath}.clients", "expected 'any' or a list of matchers")
                raw_clients = []
            for j, c in enumerate(raw_clients):
                matcher = _compile_client(c, f"{rpath}.clients[{j}]", problems)
                if matcher is not None:
                    clients.append(matcher)
        elif "clients" in r:
            problems.add(f"{rpath}.clients", "a deny rule takes no clients")
        max_body: int | None = None
        if "max_body_size" in r and parse_size is not None:
            try:
                max_body = parse_size(r["max_body_size"])
            except ValueError as exc:
                problems.add(f"{rpath}.max_body_size", str(exc))
        rules.append(Rule(name, methods, paths, action == "deny", tuple(clients), max_body))
    if problems.items:
        return None, problems.items
    return Policy(tuple(rules), deny_serials, deny_fps, deny_spki), []
