"""What ``mtls-proxy check`` tells beyond "valid": notes on the trust setup, a verdict on one client cert.

A config can be valid and still surprise: one pinned certificate shared by every install is one
identity; strict mode refuses certificates that nginx accepts. These functions say so in words,
from the loaded settings and the certificates only (no network, no TLS handshake), so they are
tested directly. ``check --client-cert FILE`` judges a certificate with the same rules the proxy
applies: the trust anchors and pins, the per-request certificate checks
(:func:`mtls_proxy.trust.certificate_refusal`) and what X509_STRICT refuses
(:mod:`mtls_proxy.x509_strict`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mtls_proxy.certs import is_self_signed, load_certificates, parse_peer, rebuild_chain
from mtls_proxy.config import Settings
from mtls_proxy.judging.judge import peer_standing
from mtls_proxy.state import TrustFacts
from mtls_proxy.trust import fingerprint_sha256
from mtls_proxy.x509_strict import strict_leaf_refusals

STRICT_NOTE = (
    "tls.x509_strict: true (the default): a client certificate issued by a CA must meet RFC 5280's profile,"
    " notably carry an Authority Key Identifier (keyid), as certificates from `mtls-proxy pki` do; many older"
    " CAs and hand-rolled scripts omit it, and the handshake is then refused (log: reason=x509_strict)."
    " Test one with `mtls-proxy check --config FILE --client-cert CERT`; tls.x509_strict: false accepts it"
)
NOT_STRICT_NOTE = (
    "tls.x509_strict: false: OpenSSL's RFC 5280 profile checks are off (e.g. client certificates without an"
    " Authority Key Identifier are accepted, as nginx does)"
)
PINNED_NOTE = (
    "tls.client_certs pins {n} certificate(s). Each pinned certificate is ONE identity: every install that"
    " carries it is the same client to the policy and to Django, and refusing it refuses them all. Per-device"
    " certificates from `mtls-proxy pki` tell installs apart and revoke one (docs/mobile.md)"
)
PARTIAL_CHAIN_NOTE = (
    "a pinned certificate is issued by a CA, so OpenSSL accepts partial chains: any CA certificate in"
    " tls.client_ca then anchors chains on its own, without its root"
)


@dataclass(frozen=True)
class TrustMaterial:
    """The client CA and pinned certificates a config names, read once."""

    cas: tuple[x509.Certificate, ...]
    pinned: tuple[tuple[str, x509.Certificate], ...]  # (key path, certificate)
    revoked: frozenset[tuple[str, int]]  # (issuer DN, serial) from tls.crl

    @classmethod
    def read(cls, settings: Settings) -> TrustMaterial:
        cas = tuple(c for p in settings.tls.client_ca for c in x509.load_pem_x509_certificates(p.read_bytes()))
        files = settings.tls.client_certs
        pinned = tuple(
            (f"tls.client_certs[{i}]" if len(files) > 1 else "tls.client_certs", c)
            for i, p in enumerate(files) for c in load_certificates(p.read_bytes())
        )
        crls = [x509.load_pem_x509_crl(p.read_bytes()) for p in settings.tls.crl]
        return cls(cas, pinned, frozenset((c.issuer.rfc4514_string(), r.serial_number) for c in crls for r in c))


def trust_notes(settings: Settings, material: TrustMaterial, now: dt.datetime) -> list[str]:
    """What ``check`` prints after OK about the client trust setup (each note one line)."""
    notes: list[str] = []
    if material.pinned:
        notes.append(PINNED_NOTE.format(n=len(material.pinned)))
        if any(not is_self_signed(c) for _, c in material.pinned):
            notes.append(PARTIAL_CHAIN_NOTE)
        for key_path, c in material.pinned:
            if c.not_valid_after_utc < now:
                notes.append(f"{key_path}: {c.subject.rfc4514_string()!r} expired on "
                             f"{c.not_valid_after_utc:%Y-%m-%d}: handshakes with it are refused (cert_expired)")
            else:
                notes.append(f"{key_path}: {c.subject.rfc4514_string()!r} is valid until "
                             f"{c.not_valid_after_utc:%Y-%m-%d}; then every install that carries it is refused")
    if material.cas:
        notes.append(STRICT_NOTE if settings.tls.x509_strict else NOT_STRICT_NOTE)
    return notes


def judge_client_cert(settings: Settings, material: TrustMaterial, cert: x509.Certificate,
                      now: dt.datetime) -> tuple[bool, list[str]]:
    """Would the proxy accept ``cert`` (its key proven)? (accepted, the reasons in words).

    Not a replacement for the handshake (signatures of a pinned certificate, the policy rules of a
    request), but it names the trust anchor, the pin, revocation, the per-request certificate
    checks (:func:`mtls_proxy.judging.judge.peer_standing`, what every request is judged by) and
    strict-mode problems.
    """
    der = cert.public_bytes(Encoding.DER)
    fp = fingerprint_sha256(cert)
    pins = {fingerprint_sha256(c) for _, c in material.pinned}
    chain = rebuild_chain(der, material.cas)
    reasons: list[str] = []
    if fp in pins:
        reasons.append(f"pinned by tls.client_certs (SHA-256 {fp})")
    elif chain:
        anchor = x509.load_der_x509_certificate(chain[-1])
        reasons.append(f"issued under the client CA {anchor.subject.rfc4514_string()!r}")
    else:
        return False, [f"refused at the handshake (unknown_ca): not issued by a configured client CA and not pinned"
                       f" (SHA-256 {fp})"]
    refused = False
    if cert.not_valid_after_utc < now or cert.not_valid_before_utc > now:
        refused = True
        reasons.append(f"refused at the handshake (cert_expired / cert_not_yet_valid): valid "
                       f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}")
    if settings.tls.x509_strict and chain:  # a pinned certificate standing alone is a one-certificate chain
        for why in strict_leaf_refusals(cert):
            refused = True
            reasons.append(f"refused at the handshake by tls.x509_strict: true (reason=x509_strict): it {why};"
                           " accepted with tls.x509_strict: false")
    trust = TrustFacts(revoked=material.revoked, anchors=frozenset(fingerprint_sha256(c) for c in material.cas),
                       pinned=frozenset(pins), max_chain=settings.tls.verify_depth)
    denial = peer_standing(parse_peer(der, chain), trust, settings.policy, now.timestamp())
    if denial is not None and denial not in ("cert_expired", "cert_not_yet_valid"):  # said above
        refused = True
        reasons.append("revoked by tls.crl: refused at the handshake (cert_revoked); open connections get 403 revoked"
                       if denial == "revoked" else f"refused on every request: 403 {denial}")
    return not refused, reasons
