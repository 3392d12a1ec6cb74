"""The runtime state bundle and its holder.

Everything a request is judged with (SSL context, compiled policy with the CRLs'
revoked serials merged in, identity encoder) lives in one immutable
:class:`RuntimeState`. Start-up and reload both go through :func:`build_state`,
so they cannot drift apart; the holder swaps the whole bundle in one assignment,
and a failed build leaves the old one serving.
"""

from __future__ import annotations

import datetime as dt
import itertools
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from mtls_proxy.certs import load_certificates, rebuild_chain
from mtls_proxy.config import Settings, load_settings
from mtls_proxy.errors import ConfigError, ConfigProblem
from mtls_proxy.identity import IdentityEncoder, IdentityOptions, load_signing_key
from mtls_proxy.policy import Policy
from mtls_proxy.tls import build_server_context
from mtls_proxy.trust import fingerprint_sha256

_generations = itertools.count(1)


@dataclass(frozen=True)
class RuntimeState:
    settings: Settings
    ssl_context: ssl.SSLContext
    policy: Policy
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
    crl_next_updates: tuple[tuple[str, dt.datetime | None], ...]
    _chains: dict[bytes, tuple[bytes, ...]] = field(default_factory=dict, compare=False, repr=False)


def _read_crls(paths: tuple[Path, ...]) -> tuple[set[tuple[str, int]], list[tuple[str, dt.datetime | None]]]:
    revoked: set[tuple[str, int]] = set()
    next_updates: list[tuple[str, dt.datetime | None]] = []
    for p in paths:
        crl = x509.load_pem_x509_crl(p.read_bytes())
        issuer = crl.issuer.rfc4514_string()
        revoked.update((issuer, r.serial_number) for r in crl)
        next_updates.append((str(p), crl.next_update_utc))
    return revoked, next_updates


def build_state(settings: Settings, now: float) -> RuntimeState:
    """Build a complete new state from validated settings (blocking file and crypto work)."""
    try:
        ctx = build_server_context(settings.tls)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(str(settings.source), [ConfigProblem("tls", f"cannot build the TLS context: {exc}")]) from exc
    revoked, next_updates = _read_crls(settings.tls.crl)
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
        policy=settings.policy.with_trust(
            revoked,
            (fingerprint_sha256(c) for c in cas),
            settings.tls.verify_depth,
            (fingerprint_sha256(c) for c in pinned),
        ),
        identity=encoder,
        generation=next(_generations),
        loaded_at=now,
        server_cert_not_after=leaf.not_valid_after_utc,
        client_ca_not_after=tuple((c.subject.rfc4514_string(), c.not_valid_after_utc) for c in cas),
        client_ca_certs=tuple(cas),
        crl_next_updates=tuple(next_updates),
    )


def load_state(config_path: str | Path, now: float) -> RuntimeState:
    """Load the config file and build its state: what ``run`` starts with and what SIGHUP does."""
    return build_state(load_settings(config_path), now)
