"""Settings: one frozen object, loaded from YAML and validated up front, then trusted.

:func:`load_settings` reads the file, checks every key (unknown keys, types, files
that must exist, a key that must match its certificate, CA files that must hold a
CA, CRLs that must be signed by a client CA and not expired) and collects *every*
problem with its key path before raising one :class:`ConfigError`. Relative file
paths are resolved against the config file's directory. Nothing here touches the
network or the event loop; only the CLI turns a ConfigError into an exit code.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtls_proxy.certs import is_ca, load_certificates
from mtls_proxy.errors import ConfigError, ConfigProblem
from mtls_proxy.paths import MAX_PATH_LENGTH, MAX_PATH_SEGMENTS
from mtls_proxy.policy import Policy, compile_policy
from mtls_proxy.trust import pin_refusal
from mtls_proxy.x509_strict import strict_ca_problems


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int
    #: "required" (default) or "optional": the listener lets clients without a certificate finish the
    #: handshake; only rules with ``clients: none`` admit them (enrollment)
    client_auth: str = "required"

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UpstreamSettings:
    url: str
    host: str | None = None
    port: int | None = None
    unix_path: str | None = None

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}" if self.unix_path is None else "localhost"


@dataclass(frozen=True)
class TlsSettings:
    cert: Path
    key: Path
    client_ca: tuple[Path, ...]
    crl: tuple[Path, ...] = ()
    #: CRLs published at http(s) URLs (the enrollment service's): fetched every crl_refresh (crlfetch.py)
    crl_urls: tuple[str, ...] = ()
    crl_refresh: float = 10.0
    min_version: str = "1.2"
    handshake_timeout: float = 10.0
    #: Names this listener serves; when a client sent SNI, Host must name the same server (else 421).
    server_names: tuple[str, ...] = ()
    session_tickets: bool = True
    #: most CA certificates allowed between a client leaf and its anchor (anchor included); longer: 403
    verify_depth: int = 2
    #: pinned client certificates (PEM or DER files), each trusted exactly, by its SHA-256
    client_certs: tuple[Path, ...] = ()
    #: OpenSSL's RFC 5280 profile checks (X509_STRICT); false accepts e.g. leaves without an AKID
    x509_strict: bool = True
    #: ALPN protocols offered, in the server's order of preference ("h2", "http/1.1")
    alpn: tuple[str, ...] = ("h2", "http/1.1")


@dataclass(frozen=True)
class IdentitySettings:
    enabled: bool = True
    rfc9440: bool = False
    rfc9440_chain: bool = False
    signing_key_file: Path | None = None
    #: add ``Client-Cert-Renew-By`` to responses when the client cert expires within this (0: never)
    renew_window: float = 0.0


@dataclass(frozen=True)
class AdminSettings:
    #: plain-HTTP /healthz, /readyz, /metrics; None turns the admin listener off
    listen: ListenAddress | None = ListenAddress("127.0.0.1", 9900)


@dataclass(frozen=True)
class ReloadSettings:
    #: reload when the config, certificate, key, CA, CRL or signing-key files change (no SIGHUP needed)
    watch: bool = False
    debounce: float = 0.3


@dataclass(frozen=True)
class Limits:
    max_head_size: int = 16 * 1024
    max_body_size: int = 32 * 1024 * 1024
    head_timeout: float = 10.0
    idle_timeout: float = 60.0
    body_timeout: float = 60.0
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 60.0
    upstream_idle_timeout: float = 4.0
    upstream_max_idle: int = 64
    max_connections: int = 4096
    drain_timeout: float = 30.0
    #: requests parsed ahead of the one being answered on one connection; past it the proxy stops reading
    max_pipelined: int = 32
    #: a client that takes no response bytes for this long is cut off (and its upstream connection closed)
    send_timeout: float = 60.0
    #: a WebSocket tunnel with no bytes either way for this long is closed
    tunnel_idle_timeout: float = 600.0
    #: a WebSocket tunnel is closed this long after it opened, whatever its traffic
    tunnel_max_lifetime: float = 86400.0
    #: TLS handshakes in progress, counted apart from max_connections; past it new sockets are closed at once
    max_handshakes: int = 512
    #: handshakes in progress from one client address; past it that address's new sockets are closed at once
    max_handshakes_per_address: int = 64
    #: a new connection must send its first TLS bytes within this (the rest of tls.handshake_timeout follows)
    first_byte_timeout: float = 3.0
    #: requests a minute from one address without a client certificate (client_auth: optional); over: 429
    anonymous_requests_per_minute: int = 60
    max_path_length: int = MAX_PATH_LENGTH
    max_path_segments: int = MAX_PATH_SEGMENTS


@dataclass(frozen=True)
class Http2Settings:
    """HTTP/2 limits (the frontend in mtls_proxy/frontends/h2.py). Each one exceeded: GOAWAY, a log line, a metric."""

    #: SETTINGS_MAX_CONCURRENT_STREAMS; one stream more: GOAWAY PROTOCOL_ERROR (h2 enforces it)
    max_concurrent_streams: int = 100
    #: SETTINGS_INITIAL_WINDOW_SIZE: request body bytes a stream may have in flight before they are forwarded
    initial_window_size: int = 256 * 1024
    #: the connection-level receive window (all streams together)
    connection_window_size: int = 4 * 1024 * 1024
    #: SETTINGS_MAX_HEADER_LIST_SIZE (decoded size, 32 bytes per field included); larger: ENHANCE_YOUR_CALM
    max_header_list_size: int = 32 * 1024
    #: SETTINGS_HEADER_TABLE_SIZE: the HPACK dynamic table the client may make us keep
    header_table_size: int = 4096
    #: CONTINUATION frames allowed in one header block (the 2024 CONTINUATION flood)
    max_continuation_frames: int = 16
    #: RST_STREAM frames from the client (and streams it made us reset) per second (Rapid Reset)
    max_resets_per_second: int = 100
    #: SETTINGS frames from the client per second
    max_settings_per_second: int = 10
    #: PING frames from the client per second
    max_pings_per_second: int = 10
    #: empty DATA frames (no END_STREAM) and PRIORITY frames per second (CVE-2019-9518, -9513)
    max_empty_frames_per_second: int = 100
    #: a stream whose response cannot move because the client's window stays closed this long is reset
    zero_window_timeout: float = 30.0


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "info"
    format: str = "text"
    access_log: bool = True


@dataclass(frozen=True)
class Settings:
    source: Path
    listen: tuple[ListenAddress, ...]
    upstream: UpstreamSettings
    tls: TlsSettings
    policy: Policy
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    limits: Limits = field(default_factory=Limits)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    reload: ReloadSettings = field(default_factory=ReloadSettings)
    http2: Http2Settings = field(default_factory=Http2Settings)

    def watched_files(self) -> tuple[Path, ...]:
        """Every file a reload reads: what ``reload.watch`` watches."""
        files = [self.source, self.tls.cert, self.tls.key, *self.tls.client_ca, *self.tls.client_certs,
                 *self.tls.crl]
        if self.identity.signing_key_file is not None:
            files.append(self.identity.signing_key_file)
        return tuple(files)


TOP_LEVEL_KEYS = ("listen", "upstream", "tls", "identity", "policy", "limits", "logging", "admin", "reload", "http2")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgG]i?[bB]?|[bB])?\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_MAX_DURATION = 10 * 365 * 86400.0  # ten years: finite, and more than any timeout needs
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_size(value: Any) -> int:
    """``1048576``, ``"512k"``, ``"10M"``, ``"1GiB"`` -> bytes (binary units)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1048576, '512k', '10M' or '1G'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size such as 1048576, '512k', '10M' or '1G'")
    unit = (m.group(2) or "").lower()[:1]
    return int(m.group(1)) * _SIZE_UNITS[unit]


def parse_duration(value: Any) -> float:
    """``30``, ``2.5``, ``"500ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"14d"`` -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, '500ms', '30s' or '5m'")
    if isinstance(value, (int, float)):
        # "not > 0" also refuses NaN; inf (YAML .inf, 1e400) and ints too big for a float are refused too:
        # the event loop cannot arm a timer with them (uvloop raises on NaN for every connection)
        if not value > 0 or value > _MAX_DURATION:
            raise ValueError("a duration must be positive and finite")
        return float(value)
    m = _DURATION_RE.match(str(value))
    if not m or float(m.group(1)) <= 0 or float(m.group(1)) * _DURATION_UNITS[m.group(2)] > _MAX_DURATION:
        raise ValueError(f"{value!r} is not a positive duration such as 30, '500ms', '30s' or '5m'")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


class _Loader:
    """Walks the YAML tree, converting values and recording problems with their key paths."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.problems: list[ConfigProblem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(path, message))

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, "expected a mapping")
            return {}
        for k in value:
            if k not in allowed:
                self.problem(f"{path}.{k}" if path else str(k), f"unknown key; allowed: {', '.join(allowed)}")
        return value

    def typed(self, d: dict[str, Any], key: str, path: str, kind: type, default: Any) -> Any:
        if key not in d:
            return default
        v = d[key]
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            self.problem(f"{path}.{key}", f"expected {kind.__name__}, got {type(v).__name__}")
            return default
        return v

    def converted(self, d: dict[str, Any], key: str, path: str, convert: Any, default: Any) -> Any:
        if key not in d:
            return default
        try:
            return convert(d[key])
        except ValueError as exc:
            self.problem(f"{path}.{key}", str(exc))
            return default

    def file(self, value: Any, path: str) -> Path | None:
        if not isinstance(value, str) or not value:
            self.problem(path, "expected a file path")
            return None
        p = Path(value)
        if not p.is_absolute():
            p = self.base_dir / p
        if not p.exists():
            self.problem(path, f"{p}: no such file")
            return None
        if not p.is_file():
            self.problem(path, f"{p}: not a regular file")
            return None
        if not os.access(p, os.R_OK):
            self.problem(path, f"{p}: not readable")
            return None
        return p

    def files(self, value: Any, path: str) -> tuple[Path, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            self.problem(path, "expected a file path or a non-empty list of file paths")
            return ()
        out = []
        for i, v in enumerate(items):
            p = self.file(v, f"{path}[{i}]" if isinstance(value, list) else path)
            if p is not None:
                out.append(p)
        return tuple(out)


def _parse_listen(loader: _Loader, raw: Any, key: str = "listen") -> tuple[ListenAddress, ...]:
    items = [raw] if isinstance(raw, (str, int)) else raw
    if not isinstance(items, list) or not items:
        loader.problem(key, "expected 'host:port' or a list of them")
        return ()
    out = []
    for i, item in enumerate(items):
        path = f"{key}[{i}]" if isinstance(raw, list) else key
        client_auth = "required"
        if isinstance(item, dict) and key == "listen":
            for k in item:
                if k not in ("address", "client_auth"):
                    loader.problem(f"{path}.{k}", "unknown key; allowed: address, client_auth")
            client_auth = str(item.get("client_auth", "required"))
            if client_auth not in ("required", "optional"):
                loader.problem(f"{path}.client_auth", f"{client_auth!r}: use 'required' or 'optional'")
            if "address" not in item:
                loader.problem(f"{path}.address", "required")
                continue
            item = item["address"]
        text = str(item)
        host, sep, port = text.rpartition(":")
        host = host.strip("[]") if sep else "0.0.0.0"
        port = port if sep else text
        if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:  # not '²' or '٣'
            loader.problem(path, f"{text!r} is not host:port")
            continue
        out.append(ListenAddress(host or "0.0.0.0", int(port), client_auth))
    return tuple(out)


def _parse_upstream(loader: _Loader, raw: Any) -> UpstreamSettings | None:
    if not isinstance(raw, str):
        loader.problem("upstream", "expected 'http://host:port' or 'unix:/path/to.sock'")
        return None
    if raw.startswith("unix:"):
        path = raw[5:]
        if not path.startswith("/"):
            loader.problem("upstream", f"{raw!r}: the unix socket path must be absolute")
            return None
        return UpstreamSettings(url=raw, unix_path=path)
    m = re.fullmatch(r"http://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})/?", raw)
    if not m or int(m.group(2)) > 65535:
        loader.problem("upstream", f"{raw!r}: expected 'http://host:port' or 'unix:/path/to.sock'")
        return None
    return UpstreamSettings(url=raw, host=m.group(1).strip("[]"), port=int(m.group(2)))


def _load_pem_certs(loader: _Loader, path: Path, key_path: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError:
        loader.problem(key_path, f"{path}: no PEM certificate could be read")
        return []
    return certs



def _check_tls(loader: _Loader, raw: Any) -> tuple[TlsSettings | None, list[x509.Certificate]]:
    d = loader.mapping(
        raw, "tls", ("cert", "key", "client_ca", "client_certs", "crl", "crl_refresh", "min_version",
                     "handshake_timeout", "server_names", "session_tickets", "verify_depth", "x509_strict", "alpn"),
    )
    if raw is None:
        return None, []  # reported once as "tls: required"
    for req in ("cert", "key"):
        if req not in d:
            loader.problem(f"tls.{req}", "required")
    if "client_ca" not in d and not d.get("client_certs"):
        loader.problem("tls.client_ca", "required (a client CA), unless tls.client_certs pins client certificates")
    cert = loader.file(d["cert"], "tls.cert") if "cert" in d else None
    key = loader.file(d["key"], "tls.key") if "key" in d else None
    cas = loader.files(d["client_ca"], "tls.client_ca") if "client_ca" in d else ()
    pinned_files = loader.files(d["client_certs"], "tls.client_certs") if d.get("client_certs") else ()
    strict = loader.typed(d, "x509_strict", "tls", bool, True)
    crl_files, crl_urls = _split_crl_entries(loader, d.get("crl"))
    crls = loader.files(crl_files, "tls.crl") if crl_files else ()
    min_version = str(d.get("min_version", "1.2"))
    if min_version not in ("1.2", "1.3"):
        loader.problem("tls.min_version", f"{min_version!r}: use '1.2' or '1.3' (TLS 1.0 and 1.1 are refused)")
    server_names = d.get("server_names", [])
    if isinstance(server_names, str):
        server_names = [server_names]
    if not isinstance(server_names, list) or not all(isinstance(s, str) for s in server_names):
        loader.problem("tls.server_names", "expected a list of host names")
        server_names = []

    leaf: x509.Certificate | None = None
    if cert is not None:
        chain = _load_pem_certs(loader, cert, "tls.cert")
        leaf = chain[0] if chain else None
        if leaf is not None and leaf.not_valid_after_utc < dt.datetime.now(dt.UTC):
            loader.problem("tls.cert", f"{cert}: the server certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    if key is not None:
        try:
            private_key = serialization.load_pem_private_key(key.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            loader.problem("tls.key", f"{key}: not an unencrypted PEM private key ({exc})")
        else:
            if leaf is not None and leaf.public_key() != private_key.public_key():
                loader.problem("tls.key", f"{key}: does not match the certificate in {cert}")

    ca_certs: list[x509.Certificate] = []
    for i, ca in enumerate(cas):
        kp = f"tls.client_ca[{i}]" if isinstance(d.get("client_ca"), list) else "tls.client_ca"
        in_file = _load_pem_certs(loader, ca, kp)
        found = [c for c in in_file if is_ca(c)]
        if not found:
            loader.problem(kp, f"{ca}: holds no CA certificate (basicConstraints CA:TRUE)" + (
                "; to trust exactly this certificate (a self-signed app certificate, say), list it in"
                " tls.client_certs instead" if in_file else ""))
        for c in found if strict else ():
            for problem in strict_ca_problems(c):
                loader.problem(kp, f"{ca}: {problem}")
        ca_certs += found

    pinned: list[tuple[str, x509.Certificate]] = []
    for i, pf in enumerate(pinned_files):
        kp = f"tls.client_certs[{i}]" if isinstance(d.get("client_certs"), list) else "tls.client_certs"
        try:
            certs = load_certificates(pf.read_bytes())
        except ValueError:
            loader.problem(kp, f"{pf}: no certificate could be read (PEM, or DER as keytool -exportcert writes)")
            continue
        for c in certs:
            refusal = pin_refusal(c)
            if refusal is not None:
                loader.problem(kp, f"{pf}: {c.subject.rfc4514_string()!r} {refusal}")
            pinned.append((kp, c))

    now = dt.datetime.now(dt.UTC)
    crl_issuers: list[x509.Name] = []
    for i, crl_path in enumerate(crls):
        kp = f"tls.crl[{i}]" if isinstance(d.get("crl"), list) else "tls.crl"
        try:
            crl = x509.load_pem_x509_crl(crl_path.read_bytes())
        except ValueError:
            loader.problem(kp, f"{crl_path}: not a PEM CRL")
            continue
        issuers = [c for c in ca_certs if c.subject == crl.issuer]
        if ca_certs and not any(crl.is_signature_valid(c.public_key()) for c in issuers):  # type: ignore[arg-type]
            loader.problem(kp, f"{crl_path}: not signed by any configured client CA")
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            loader.problem(kp, f"{crl_path}: expired (nextUpdate {crl.next_update_utc:%Y-%m-%d %H:%M:%S}Z)")
        crl_issuers.append(crl.issuer)

    for kp, c in pinned if (crls or crl_urls) else ():  # a CRL URL's issuer is unknown here: refused too
        if c.issuer not in crl_issuers:
            loader.problem(kp, f"{c.subject.rfc4514_string()!r}: with tls.crl set, OpenSSL wants a CRL from the issuer"
                           f" of every client certificate and none is from {c.issuer.rfc4514_string()!r} (a"
                           " self-signed certificate has none): every handshake with it would fail (crl_missing);"
                           " remove tls.crl while certificates are pinned (refuse one with policy.deny or by"
                           " unpinning it)")

    if cert is None or key is None or not (cas or pinned_files):
        return None, ca_certs
    return (
        TlsSettings(
            cert=cert, key=key, client_ca=cas, crl=crls, crl_urls=crl_urls,
            crl_refresh=loader.converted(d, "crl_refresh", "tls", parse_duration, 10.0), min_version=min_version,
            handshake_timeout=loader.converted(d, "handshake_timeout", "tls", parse_duration, 10.0),
            server_names=tuple(s.lower() for s in server_names),
            session_tickets=loader.typed(d, "session_tickets", "tls", bool, True),
            verify_depth=_verify_depth(loader, d),
            client_certs=pinned_files,
            x509_strict=strict,
            alpn=_alpn(loader, d),
        ),
        ca_certs,
    )


def _split_crl_entries(loader: _Loader, raw: Any) -> tuple[Any, tuple[str, ...]]:
    """``tls.crl`` holds file paths and http(s) URLs; the URLs are fetched (and checked) by the state builder."""
    if not raw:
        return None, ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        return raw, ()  # loader.files reports the type
    urls = tuple(v for v in items if isinstance(v, str) and v.startswith(("http://", "https://")))
    for i, v in enumerate(items):
        if isinstance(v, str) and "://" in v and v not in urls:
            loader.problem(f"tls.crl[{i}]" if isinstance(raw, list) else "tls.crl", f"{v}: only http(s) URLs")
    files = [v for v in items if not (isinstance(v, str) and "://" in v)]
    return (files or None), urls


def _verify_depth(loader: _Loader, d: dict[str, Any]) -> int:
    depth = loader.typed(d, "verify_depth", "tls", int, 2)
    if not 1 <= depth <= 10:
        loader.problem("tls.verify_depth", f"{depth}: use 1 (leaf issued by the anchor) to 10")
        return 2
    return int(depth)


_ALPN_PROTOCOLS = ("h2", "http/1.1")


def _alpn(loader: _Loader, d: dict[str, Any]) -> tuple[str, ...]:
    raw = d.get("alpn", list(TlsSettings.alpn))
    if isinstance(raw, str):
        raw = [raw]
    if (not isinstance(raw, list) or not raw or len(set(raw)) != len(raw)
            or not all(isinstance(p, str) and p in _ALPN_PROTOCOLS for p in raw)):
        loader.problem("tls.alpn", f"{raw!r}: expected a non-empty list of distinct protocols among "
                                   + ", ".join(_ALPN_PROTOCOLS))
        return TlsSettings.alpn
    return tuple(raw)


def _parse_identity(loader: _Loader, raw: Any) -> IdentitySettings:
    d = loader.mapping(raw, "identity", ("headers", "rfc9440", "rfc9440_chain", "signing_key_file", "renew_window"))
    signing = None
    if d.get("signing_key_file") is not None:
        signing = loader.file(d["signing_key_file"], "identity.signing_key_file")
        if signing is not None and len(signing.read_bytes().strip()) < 32:
            loader.problem("identity.signing_key_file", f"{signing}: the key must be at least 32 bytes")
    return IdentitySettings(
        enabled=loader.typed(d, "headers", "identity", bool, True),
        rfc9440=loader.typed(d, "rfc9440", "identity", bool, False),
        rfc9440_chain=loader.typed(d, "rfc9440_chain", "identity", bool, False),
        signing_key_file=signing,
        renew_window=loader.converted(d, "renew_window", "identity", _duration_or_zero, 0.0),
    )


def _duration_or_zero(value: Any) -> float:
    return 0.0 if value in (0, "0", None, False) else parse_duration(value)


def _parse_admin(loader: _Loader, raw: Any) -> AdminSettings:
    if raw is False:
        return AdminSettings(listen=None)
    d = loader.mapping(raw, "admin", ("listen",))
    if "listen" not in d:
        return AdminSettings()
    if d["listen"] in (None, False, "off"):
        return AdminSettings(listen=None)
    addresses = _parse_listen(loader, d["listen"], "admin.listen")
    return AdminSettings(listen=addresses[0] if addresses else None)


def _parse_reload(loader: _Loader, raw: Any) -> ReloadSettings:
    d = loader.mapping(raw, "reload", ("watch", "debounce"))
    return ReloadSettings(
        watch=loader.typed(d, "watch", "reload", bool, False),
        debounce=loader.converted(d, "debounce", "reload", parse_duration, 0.3),
    )


_LIMIT_SIZES = ("max_head_size", "max_body_size", "max_path_length")
_LIMIT_DURATIONS = ("head_timeout", "idle_timeout", "body_timeout", "upstream_connect_timeout",
                    "upstream_read_timeout", "upstream_idle_timeout", "drain_timeout", "send_timeout",
                    "tunnel_idle_timeout", "tunnel_max_lifetime", "first_byte_timeout")
_LIMIT_INTS = ("upstream_max_idle", "max_connections", "max_pipelined", "max_handshakes",
               "max_handshakes_per_address", "max_path_segments", "anonymous_requests_per_minute")
_LIMIT_NONZERO = ("max_connections", "max_path_length", "max_path_segments", "max_pipelined", "max_handshakes",
                  "max_handshakes_per_address", "anonymous_requests_per_minute")


def _parse_limits(loader: _Loader, raw: Any) -> Limits:
    d = loader.mapping(raw, "limits", _LIMIT_SIZES + _LIMIT_DURATIONS + _LIMIT_INTS)
    defaults = Limits()
    values: dict[str, Any] = {}
    for k in _LIMIT_SIZES:
        values[k] = loader.converted(d, k, "limits", parse_size, getattr(defaults, k))
    for k in _LIMIT_DURATIONS:
        values[k] = loader.converted(d, k, "limits", parse_duration, getattr(defaults, k))
    for k in _LIMIT_INTS:
        v = loader.typed(d, k, "limits", int, getattr(defaults, k))
        if v < 0:
            loader.problem(f"limits.{k}", "must be positive")
        values[k] = v
    for k in _LIMIT_NONZERO:
        if values[k] == 0:
            loader.problem(f"limits.{k}", "must be positive")
    if values["max_head_size"] < 1024:
        loader.problem("limits.max_head_size", "must be at least 1024 bytes")
    return Limits(**values)


_HTTP2_INTS = {  # key -> (lowest, highest) allowed
    "max_concurrent_streams": (1, 10_000),
    "max_continuation_frames": (0, 63),  # h2 itself refuses a 65th frame in a header block
    "max_resets_per_second": (1, 1_000_000),
    "max_settings_per_second": (1, 1_000_000),
    "max_pings_per_second": (1, 1_000_000),
    "max_empty_frames_per_second": (1, 1_000_000),
}
_HTTP2_SIZES = {  # key -> (lowest, highest) allowed, RFC 9113 6.5.2 where it sets one
    "initial_window_size": (65535, 2**31 - 1),
    "connection_window_size": (65535, 2**31 - 1),
    "max_header_list_size": (1024, 16 * 1024 * 1024),
    "header_table_size": (0, 1 << 20),
}


def _parse_http2(loader: _Loader, raw: Any) -> Http2Settings:
    d = loader.mapping(raw, "http2", (*_HTTP2_INTS, *_HTTP2_SIZES, "zero_window_timeout"))
    defaults = Http2Settings()
    values: dict[str, Any] = {}
    for k, (low, high) in _HTTP2_INTS.items():
        v = loader.typed(d, k, "http2", int, getattr(defaults, k))
        if not low <= v <= high:
            loader.problem(f"http2.{k}", f"{v}: must be between {low} and {high}")
            v = getattr(defaults, k)
        values[k] = v
    for k, (low, high) in _HTTP2_SIZES.items():
        v = loader.converted(d, k, "http2", parse_size, getattr(defaults, k))
        if not low <= v <= high:
            loader.problem(f"http2.{k}", f"{v}: must be between {low} and {high} bytes")
            v = getattr(defaults, k)
        values[k] = v
    values["zero_window_timeout"] = loader.converted(d, "zero_window_timeout", "http2", parse_duration,
                                                     defaults.zero_window_timeout)
    return Http2Settings(**values)


def _parse_logging(loader: _Loader, raw: Any) -> LoggingSettings:
    d = loader.mapping(raw, "logging", ("level", "format", "access_log"))
    level = str(d.get("level", "info")).lower()
    if level not in ("debug", "info", "warning", "error"):
        loader.problem("logging.level", f"{level!r}: use debug, info, warning or error")
    fmt = str(d.get("format", "text"))
    if fmt not in ("text", "json"):
        loader.problem("logging.format", f"{fmt!r}: use text or json")
    return LoggingSettings(level=level, format=fmt, access_log=loader.typed(d, "access_log", "logging", bool, True))


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Load and validate a config file; raise :class:`ConfigError` listing every problem."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(source), [ConfigProblem("", f"{source}: no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(source), [ConfigProblem("", f"{source}: cannot read ({exc})")]) from None
    try:
        raw = yaml.safe_load(text)
    except RecursionError:  # deeply nested flow collections exhaust PyYAML's recursive composer
        raise ConfigError(str(source), [ConfigProblem("", "not valid YAML (nested too deeply)")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(str(source), [ConfigProblem("", f"not valid YAML{where}")]) from None
    return settings_from_mapping(raw, source)


def settings_from_mapping(raw: Any, source: Path) -> Settings:
    loader = _Loader(source.resolve().parent)
    top = loader.mapping(raw, "", TOP_LEVEL_KEYS)
    if not isinstance(raw, dict):
        raise ConfigError(str(source), loader.problems or [ConfigProblem("", "expected a mapping at top level")])
    for req in ("listen", "upstream", "tls", "policy"):
        if req not in top:
            loader.problem(req, "required")
    listen = _parse_listen(loader, top["listen"]) if "listen" in top else ()
    upstream = _parse_upstream(loader, top["upstream"]) if "upstream" in top else None
    tls, _ = _check_tls(loader, top.get("tls"))
    identity = _parse_identity(loader, top.get("identity"))
    limits = _parse_limits(loader, top.get("limits"))
    logging_settings = _parse_logging(loader, top.get("logging"))
    admin = _parse_admin(loader, top.get("admin"))
    reload_settings = _parse_reload(loader, top.get("reload"))
    http2 = _parse_http2(loader, top.get("http2"))
    policy = None
    if "policy" in top:
        policy, problems = compile_policy(top["policy"], "policy", parse_size)
        loader.problems += problems
    if loader.problems or upstream is None or tls is None or policy is None:
        raise ConfigError(str(source), loader.problems or [ConfigProblem("", "incomplete configuration")])
    return Settings(
        source=source, listen=listen, upstream=upstream, tls=tls, policy=policy,
        identity=identity, limits=limits, logging=logging_settings, admin=admin, reload=reload_settings,
        http2=http2,
    )
