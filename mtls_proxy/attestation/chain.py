"""Certificate-path checks shared by Android Key Attestation and iOS App Attest.

Not RFC 5280 path building: attestation chains arrive in order (leaf first), so each certificate
must be issued by the next one (names chain, signature verifies), and the top is either a copy of
a trust anchor (matched by *public key*, so every re-issue of a root counts, and the copy's own
dates and signature do not matter) or a certificate issued by an anchor. Pure: the anchors and
the time are arguments.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from mtls_proxy.attestation import result as R
from mtls_proxy.attestation.result import Refusal


def spki(cert: x509.Certificate) -> bytes:
    """The SubjectPublicKeyInfo DER: what "same key" means everywhere in this package."""
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def serial_hex(cert: x509.Certificate) -> str:
    """The serial as Google's status list writes it: lowercase hex, no leading zeros."""
    return format(cert.serial_number, "x")


# what cryptography raises for a malformed certificate, now or when a lazily decoded field is read
CERT_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion)
SIGNATURE_ERRORS = (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm)


def checked(certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Parse now every field the checks read: cryptography decodes names, extensions and keys lazily,
    so a malformed field would otherwise raise in the middle of a check instead of refusing here."""
    for i, cert in enumerate(certs):
        try:
            cert.subject.rfc4514_string()
            cert.issuer.rfc4514_string()
            _ = cert.extensions, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number
            cert.public_key()
        except CERT_ERRORS as exc:
            raise Refusal(R.CHAIN_UNPARSABLE, f"certificate {i}: {exc}") from None
    return list(certs)


def load_pem_chain(data: bytes) -> list[x509.Certificate]:
    """PEM certificates in file order; raises Refusal(chain_unparsable)."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except CERT_ERRORS as exc:
        raise Refusal(R.CHAIN_UNPARSABLE, f"not a PEM certificate list: {exc}") from None
    return checked(certs)


def load_der_chain(items: Sequence[bytes]) -> list[x509.Certificate]:
    out = []
    for i, item in enumerate(items):
        try:
            out.append(x509.load_der_x509_certificate(item))
        except CERT_ERRORS as exc:
            raise Refusal(R.CHAIN_UNPARSABLE, f"certificate {i} is not DER: {exc}") from None
    return checked(out)


def _signed_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except SIGNATURE_ERRORS:
        return False
    return True


def _check_link(child: x509.Certificate, issuer: x509.Certificate, index: int) -> None:
    if child.issuer != issuer.subject:
        raise Refusal(R.CHAIN_NAME_MISMATCH, f"certificate {index}: issuer {child.issuer.rfc4514_string()!r} is "
                      f"not the next certificate's subject {issuer.subject.rfc4514_string()!r}")
    try:
        child.verify_directly_issued_by(issuer)
    except SIGNATURE_ERRORS as exc:
        raise Refusal(R.CHAIN_SIGNATURE_INVALID, f"certificate {index}: signature does not verify with its "
                      f"issuer's key ({type(exc).__name__})") from None


def _check_validity(cert: x509.Certificate, index: int, at: dt.datetime) -> None:
    if at < cert.not_valid_before_utc:
        raise Refusal(R.CHAIN_NOT_YET_VALID, f"certificate {index} ({cert.subject.rfc4514_string()}) is valid "
                      f"from {cert.not_valid_before_utc.isoformat()}, checked at {at.isoformat()}")
    if at > cert.not_valid_after_utc:
        raise Refusal(R.CHAIN_EXPIRED, f"certificate {index} ({cert.subject.rfc4514_string()}) expired "
                      f"{cert.not_valid_after_utc.isoformat()}, checked at {at.isoformat()}")


def validate_path(certs: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate], at: dt.datetime, *,
                  check_leaf_validity: bool, require_root_in_chain: bool) -> x509.Certificate:
    """Names chain, signatures verify and dates hold at ``at`` from the leaf up to a trusted anchor;
    returns the configured anchor the path ends in.

    ``check_leaf_validity`` is False for Android: the leaf's dates are written by the device (clock
    skew, tampering). ``require_root_in_chain``: Android chains end in a self-issued root (Google's
    rule); App Attest's x5c stops below Apple's root.
    """
    if at.tzinfo is None:
        raise ValueError("the verification time must be timezone-aware")
    if not certs:
        raise Refusal(R.CHAIN_TOO_SHORT, "no certificate")
    anchor_keys = {spki(a): a for a in anchors}
    top = certs[-1]
    top_self_issued = top.issuer == top.subject
    if require_root_in_chain and not top_self_issued:
        raise Refusal(R.ROOT_NOT_SELF_ISSUED, f"the last certificate ({top.subject.rfc4514_string()}) is not a root")
    if top_self_issued and len(certs) > 1:
        anchor = anchor_keys.get(spki(top))
        if anchor is None:
            raise Refusal(R.ROOT_UNTRUSTED, f"root {top.subject.rfc4514_string()!r} has a key that is not a "
                          "configured trust anchor")
        path, issuer_of_top = list(certs[:-1]), top  # the copy has the anchor's key: not checked further
    else:
        if top_self_issued:  # a lone self-signed certificate: nothing attested
            raise Refusal(R.CHAIN_TOO_SHORT, "a single self-issued certificate")
        candidates = [a for a in anchors if a.subject == top.issuer]
        if not candidates:
            raise Refusal(R.ROOT_UNTRUSTED, f"no configured trust anchor named {top.issuer.rfc4514_string()!r}")
        path = list(certs)
        anchor = next((c for c in candidates if _signed_by(top, c)), None)  # re-issues may share the name
        if anchor is None:
            raise Refusal(R.ROOT_UNTRUSTED, f"no configured trust anchor named {top.issuer.rfc4514_string()!r} "
                          "signed the last certificate")
        issuer_of_top = anchor
    for index, cert in enumerate(path):
        issuer = path[index + 1] if index + 1 < len(path) else issuer_of_top
        _check_link(cert, issuer, index)
        if index > 0 or check_leaf_validity:
            _check_validity(cert, index, at)
    return anchor
