"""Trust anchors shipped with the package, and loading operator-supplied ones.

Shipped (package data, ``data/``):
- ``google_roots.json``: Google's hardware attestation roots as published in android/keyattestation
  ``roots.json`` (the RSA root, one re-issue of its key, and the 2025 EC P-384 "Key Attestation CA1").
  Anchors are matched by public key, so the older re-issues of the RSA key that real chains still
  carry count too.
- ``google_software_roots.pem``: the two *software* attestation roots of AOSP (their private keys are
  public). Never trusted: known only so a refusal can say ``root_software`` instead of ``root_untrusted``.
- ``apple_app_attestation_root_ca.pem``: Apple App Attestation Root CA (SHA-256 1CB9823B...C932).

Loading happens here, once, at start-up or by the CLI; the verifiers take certificates as arguments.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path

from cryptography import x509


class RootsError(ValueError):
    """A roots file that cannot be used; the message names the file."""


def _data(name: str) -> bytes:
    return resources.files("mtls_proxy.attestation").joinpath("data", name).read_bytes()


def parse_roots(data: bytes, source: str) -> tuple[x509.Certificate, ...]:
    """A JSON array of PEM strings (Google's ``roots.json`` format) or a PEM bundle."""
    text = data.lstrip()
    if not text:
        raise RootsError(f"{source}: no certificate")
    try:
        if text.startswith(b"["):
            items = json.loads(data)
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise RootsError(f"{source}: expected a JSON array of PEM strings")
            certs = [x509.load_pem_x509_certificate(i.encode("ascii")) for i in items]
        else:
            certs = x509.load_pem_x509_certificates(data)
    except (ValueError, UnicodeError) as exc:
        if isinstance(exc, RootsError):
            raise
        raise RootsError(f"{source}: not a roots file: {exc}") from None
    if not certs:
        raise RootsError(f"{source}: no certificate")
    return tuple(certs)


def load_roots_file(path: str | Path) -> tuple[x509.Certificate, ...]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RootsError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_roots(data, str(path))


@cache
def google_hardware_roots() -> tuple[x509.Certificate, ...]:
    return parse_roots(_data("google_roots.json"), "google_roots.json")


@cache
def google_software_roots() -> tuple[x509.Certificate, ...]:
    return parse_roots(_data("google_software_roots.pem"), "google_software_roots.pem")


@cache
def apple_app_attestation_roots() -> tuple[x509.Certificate, ...]:
    return parse_roots(_data("apple_app_attestation_root_ca.pem"), "apple_app_attestation_root_ca.pem")
