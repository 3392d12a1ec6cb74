"""The runtime state bundle.

Everything a request is judged with (SSL context, compiled policy, what the TLS
material says in :class:`TrustFacts`, identity encoder) lives in one immutable
:class:`RuntimeState`. Start-up and reload both go through :func:`build_state`,
so they cannot drift apart; the holder swaps the whole bundle in one assignment,
and a failed build leaves the old one serving.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mtls_proxy.certs import rebuild_chain
from mtls_proxy.config import Settings, load_settings
from mtls_proxy.errors import ConfigError, ConfigProblem
from mtls_proxy.identity import IdentityEncoder, IdentityOptions, load_signing_key
from mtls_proxy.policy import Policy
from mtls_proxy.tls import build_server_context

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
    #: SHA-256 (hex) of the trust anchors currently configured; empty: not checked
    anchors: frozenset[str] = frozenset()
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
    #: memo of :func:`mtls_proxy.judging.judge_peer` per certificate chain (see there)
    peer_verdicts: dict[tuple[bytes, tuple[bytes, ...]], Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def crl_next_updates(self) -> tuple[tuple[str, dt.datetime | None], ...]:
        return tuple((c.source, c.next_update) for c in self.trust.crls)


def _read_crls(paths: tuple[Path, ...]) -> tuple[set[tuple[str, int]], list[CrlWindow]]:
    revoked: set[tuple[str, int]] = set()
    windows: list[CrlWindow] = []
    for p in paths:
        crl = x509.load_pem_x509_crl(p.read_bytes())
        issuer = crl.issuer.rfc4514_string()
        revoked.update((issuer, r.serial_number) for r in crl)
        windows.append(CrlWindow(issuer, str(p), crl.next_update_utc))
    return revoked, windows


def build_state(settings: Settings, now: float) -> RuntimeState:
    """Build a complete new state from validated settings (blocking file and crypto work)."""
    try:
        ctx = build_server_context(settings.tls)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(str(settings.source), [ConfigProblem("tls", f"cannot build the TLS context: {exc}")]) from exc
    revoked, crl_windows = _read_crls(settings.tls.crl)
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
    return RuntimeState(
        settings=settings,
        ssl_context=ctx,
        policy=settings.policy,
        trust=TrustFacts(
            revoked=frozenset(revoked),
            anchors=frozenset(hashlib.sha256(c.public_bytes(Encoding.DER)).hexdigest() for c in cas),
            max_chain=settings.tls.verify_depth,
            crls=tuple(crl_windows),
        ),
        identity=encoder,
        generation=next(_generations),
        loaded_at=now,
        server_cert_not_after=leaf.not_valid_after_utc,
        client_ca_not_after=tuple((c.subject.rfc4514_string(), c.not_valid_after_utc) for c in cas),
        client_ca_certs=tuple(cas),
    )


def load_state(config_path: str | Path, now: float) -> RuntimeState:
    """Load the config file and build its state: what ``run`` starts with and what SIGHUP does."""
    return build_state(load_settings(config_path), now)
