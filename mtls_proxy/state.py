"""The runtime state bundle.

Everything a request is judged with (SSL context, compiled policy, what the TLS
material says in :class:`TrustFacts`, identity encoder) lives in one immutable
:class:`RuntimeState`. Start-up and reload both go through :func:`build_state`,
so they cannot drift apart; the holder swaps the whole bundle in one assignment,
and a failed build leaves the old one serving.
"""

from __future__ import annotations

import datetime as dt
import itertools
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from mtls_proxy.certs import load_certificates, rebuild_chain
from mtls_proxy.config import Settings, load_settings
from mtls_proxy.crlfetch import CrlCache, CrlFetchError
from mtls_proxy.errors import ConfigError, ConfigProblem
from mtls_proxy.identity import IdentityEncoder, IdentityOptions, load_signing_key
from mtls_proxy.policy import Policy
from mtls_proxy.tls import build_server_context
from mtls_proxy.trust import fingerprint_sha256

_generations = itertools.count(1)


@dataclass(frozen=True, slots=True)
class CrlWindow:
    """When one configured CRL may be relied on: after its nextUpdate every client of its issuer is refused."""

    issuer_dn: str
    source: str
    next_update: dt.datetime | None


@dataclass(frozen=True)
class TrustFacts:
    """What the loaded TLS material says, for the per-request judgment (:func:`mtls_proxy.judging.judge`)."""

    #: (issuer RFC 4514 DN, serial) pairs revoked by the configured CRLs
    revoked: frozenset[tuple[str, int]] = frozenset()
    #: SHA-256 (hex) of the trust anchors currently configured (client CAs); both empty: not checked
    anchors: frozenset[str] = frozenset()
    #: SHA-256 (hex) of the pinned client certificates (tls.client_certs): each an anchor for itself only
    pinned: frozenset[str] = frozenset()
    #: most CA certificates allowed above the leaf; 0: not checked
    max_chain: int = 0
    crls: tuple[CrlWindow, ...] = ()

    def crl_expiry(self, issuer_dn: str) -> dt.datetime | None:
        """The earliest nextUpdate among the CRLs of ``issuer_dn`` (None: no CRL, or no nextUpdate)."""
        times = [c.next_update for c in self.crls if c.issuer_dn == issuer_dn and c.next_update is not None]
        return min(times) if times else None


@dataclass(frozen=True)
class RuntimeState:
    settings: Settings
    ssl_context: ssl.SSLContext
    #: the context of ``client_auth: optional`` listeners (None when there are none)
    ssl_context_optional: ssl.SSLContext | None
    policy: Policy
    trust: TrustFacts
    identity: IdentityEncoder
    generation: int
    loaded_at: float
    server_cert_not_after: dt.datetime
    client_ca_not_after: tuple[tuple[str, dt.datetime], ...]
    client_ca_certs: tuple[x509.Certificate, ...]

    def rebuilt_chain(self, leaf_der: bytes) -> tuple[bytes, ...]:
        """:func:`rebuild_chain` against this state's CAs, memoised (resumptions repeat per device)."""
        chain = self._chains.get(leaf_der)
        if chain is None:
            if len(self._chains) >= 4096:
                self._chains.clear()
            chain = self._chains[leaf_der] = rebuild_chain(leaf_der, self.client_ca_certs)
        return chain
    _chains: dict[bytes, tuple[bytes, ...]] = field(default_factory=dict, compare=False, repr=False)
    #: the PEM of each CRL fetched from a URL that this state was built with
    fetched_crls: Mapping[str, bytes] = field(default_factory=dict, compare=False, repr=False)
    #: memo of :func:`mtls_proxy.judging.judge_peer` per certificate chain (see there)
    peer_verdicts: dict[tuple[bytes, tuple[bytes, ...]], Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def crl_next_updates(self) -> tuple[tuple[str, dt.datetime | None], ...]:
        return tuple((c.source, c.next_update) for c in self.trust.crls)


def _read_crls(sources: list[tuple[str, bytes]]) -> tuple[set[tuple[str, int]], list[CrlWindow]]:
    revoked: set[tuple[str, int]] = set()
    windows: list[CrlWindow] = []
    for source, pem in sources:
        crl = x509.load_pem_x509_crl(pem)
        issuer = crl.issuer.rfc4514_string()
        revoked.update((issuer, r.serial_number) for r in crl)
        windows.append(CrlWindow(issuer, source, crl.next_update_utc))
    return revoked, windows


def _check_fetched_crls(settings: Settings, fetched: Mapping[str, bytes], now: float) -> None:
    """A CRL from a URL must pass what a CRL file passes at load: signed by a client CA, not expired."""
    cas = [c for p in settings.tls.client_ca for c in x509.load_pem_x509_certificates(p.read_bytes())]
    problems: list[ConfigProblem] = []
    for url in settings.tls.crl_urls:
        crl = x509.load_pem_x509_crl(fetched[url])
        issuers = [c for c in cas if c.subject == crl.issuer]
        if not any(crl.is_signature_valid(c.public_key()) for c in issuers):  # type: ignore[arg-type]
            problems.append(ConfigProblem(f"tls.crl[{url}]", "not signed by any configured client CA"))
        elif crl.next_update_utc is not None and crl.next_update_utc.timestamp() <= now:
            when = f"{crl.next_update_utc:%Y-%m-%d %H:%M:%S}Z"
            problems.append(ConfigProblem(f"tls.crl[{url}]", f"expired (nextUpdate {when})"))
    if problems:
        raise ConfigError(str(settings.source), problems)


def build_state(settings: Settings, now: float, crl_cache: CrlCache | None = None) -> RuntimeState:
    """Build a complete new state from validated settings (blocking file, network and crypto work).

    CRLs at URLs come from ``crl_cache`` (fetched there when it holds none yet): a fetch failure
    at start-up or reload is a configuration error, as a missing CRL file is.
    """
    fetched: dict[str, bytes] = {}
    if settings.tls.crl_urls:
        try:
            fetched = (crl_cache or CrlCache()).ensure(settings.tls.crl_urls)
        except CrlFetchError as exc:
            raise ConfigError(str(settings.source), [ConfigProblem(f"tls.crl[{exc.url}]", str(exc))]) from exc
        _check_fetched_crls(settings, fetched, now)
    try:
        ctx = build_server_context(settings.tls, tuple(fetched.values()))
        optional = (build_server_context(settings.tls, tuple(fetched.values()), client_cert_optional=True)
                    if any(a.client_auth == "optional" for a in settings.listen) else None)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(str(settings.source), [ConfigProblem("tls", f"cannot build the TLS context: {exc}")]) from exc
    revoked, crl_windows = _read_crls([(str(p), p.read_bytes()) for p in settings.tls.crl] + list(fetched.items()))
    key = load_signing_key(settings.identity.signing_key_file) if settings.identity.signing_key_file else None
    encoder = IdentityEncoder(
        IdentityOptions(
            enabled=settings.identity.enabled,
            rfc9440=settings.identity.rfc9440,
            rfc9440_chain=settings.identity.rfc9440_chain,
            signing_key=key,
        )
    )
    leaf = x509.load_pem_x509_certificates(settings.tls.cert.read_bytes())[0]
    cas = [c for p in settings.tls.client_ca for c in x509.load_pem_x509_certificates(p.read_bytes())]
    pinned = [c for p in settings.tls.client_certs for c in load_certificates(p.read_bytes())]
    return RuntimeState(
        settings=settings,
        ssl_context=ctx,
        ssl_context_optional=optional,
        policy=settings.policy,
        trust=TrustFacts(
            revoked=frozenset(revoked),
            anchors=frozenset(fingerprint_sha256(c) for c in cas),
            pinned=frozenset(fingerprint_sha256(c) for c in pinned),
            max_chain=settings.tls.verify_depth,
            crls=tuple(crl_windows),
        ),
        identity=encoder,
        generation=next(_generations),
        loaded_at=now,
        server_cert_not_after=leaf.not_valid_after_utc,
        client_ca_not_after=tuple((c.subject.rfc4514_string(), c.not_valid_after_utc) for c in cas),
        client_ca_certs=tuple(cas),
        fetched_crls=fetched,
    )


def load_state(config_path: str | Path, now: float, crl_cache: CrlCache | None = None) -> RuntimeState:
    """Load the config file and build its state: what ``run`` starts with and what SIGHUP does."""
    return build_state(load_settings(config_path), now, crl_cache)
