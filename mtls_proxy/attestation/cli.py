"""``mtls-proxy attest android|ios``: verify one piece of enrollment evidence offline, print a JSON verdict.

For operators debugging an enrollment: the same verification functions the enrollment service calls,
fed from files. Exit codes: 0 the evidence is accepted (``"ok": true``), 1 it is refused (the JSON
lists the reason codes), 2 the command line or an input file is unusable (one line on stderr, no JSON).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtls_proxy.attestation.android import AndroidFacts, AndroidPolicy, AppIdentity, verify_android
from mtls_proxy.attestation.ios import ENVIRONMENTS, IosFacts, verify_ios_attestation
from mtls_proxy.attestation.result import Verdict
from mtls_proxy.attestation.roots import (
    RootsError,
    apple_app_attestation_roots,
    google_hardware_roots,
    google_software_roots,
    load_roots_file,
)
from mtls_proxy.attestation.status import StatusListError, load_status_file, shipped_status_list

PROG = "mtls-proxy attest"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class InputError(Exception):
    """An argument or input file that cannot be used; the message says which."""


def add_attest_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    attest = subparsers.add_parser(
        "attest", help="verify device attestation evidence (Android Key Attestation, iOS App Attest) offline",
        description="Verify one attestation offline and print a JSON verdict: ok, reason codes, parsed facts. "
        "Exit 0 only when the evidence is accepted, 1 when refused, 2 on unusable input.")
    sub = attest.add_subparsers(dest="attest_platform", metavar="PLATFORM", required=True)

    a = sub.add_parser("android", help="an Android Key Attestation certificate chain")
    a.add_argument("--chain", required=True, metavar="FILE", help="PEM certificates, leaf first")
    a.add_argument("--challenge-b64", required=True, metavar="B64", help="the server's nonce, base64")
    a.add_argument("--package", required=True, metavar="NAME", help="the allowed package name")
    a.add_argument("--signer-digest", required=True, action="append", metavar="D",
                   help="SHA-256 of the app signing certificate, base64 or hex (repeat for several)")
    a.add_argument("--at", metavar="ISO-8601", help="verification time with a zone (default: now)")
    a.add_argument("--status-list", metavar="FILE",
                   help="Google attestation status list JSON, merged with the shipped snapshot")
    a.add_argument("--roots", metavar="FILE", help="trust anchors instead of the shipped Google roots "
                   "(roots.json array of PEM strings, or a PEM bundle)")
    a.add_argument("--csr", metavar="FILE", help="PKCS#10 (PEM or DER) whose key the leaf must carry "
                   "(default: not checked, listed under skipped)")
    a.add_argument("--min-os-patch-level", type=int, metavar="YYYYMM", help="refuse older OS patch levels")

    i = sub.add_parser("ios", help="an iOS App Attest attestation object")
    i.add_argument("--attestation", required=True, metavar="FILE", help="the attestation object: CBOR, raw or base64")
    i.add_argument("--key-id", required=True, metavar="B64", help="the App Attest key id, base64")
    i.add_argument("--client-data-hash", required=True, metavar="B64", help="SHA-256 client data hash, base64")
    i.add_argument("--app-id", required=True, metavar="TEAM.BUNDLE", help="TEAMID.bundle.id")
    i.add_argument("--environment", required=True, choices=ENVIRONMENTS, help="the App Attest environment")
    i.add_argument("--at", metavar="ISO-8601", help="verification time with a zone (default: now)")
    i.add_argument("--roots", metavar="FILE", help="trust anchors instead of the shipped Apple App Attestation Root CA")


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what}: not base64") from None


def _digest(value: str) -> bytes:
    text = value.strip()
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        raw = bytes.fromhex(text)
    else:
        raw = _b64(text, "--signer-digest")
    if len(raw) != 32:
        raise InputError(f"--signer-digest: {len(raw)} bytes, a SHA-256 digest has 32")
    return raw


def _time(value: str | None) -> dt.datetime:
    if value is None:
        return dt.datetime.now(dt.UTC)
    try:
        at = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"--at: not an ISO-8601 time: {value!r}") from None
    if at.tzinfo is None:
        raise InputError("--at: give a time zone (e.g. 2026-02-24T12:00:00Z)")
    return at


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot read: {exc.strerror}") from None


def _csr_key(path: str) -> bytes:
    data = _read(path, "--csr")
    try:
        csr = x509.load_pem_x509_csr(data) if data.lstrip().startswith(b"-----") else x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise InputError(f"--csr {path}: not a PKCS#10 request: {exc}") from None
    return csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _cbor_or_base64(data: bytes, path: str) -> bytes:
    if data[:1] and 0xA0 <= data[0] <= 0xBF:  # a CBOR map: raw
        return data
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"--attestation {path}: neither a CBOR map nor base64") from None


def _android(args: argparse.Namespace) -> Verdict[AndroidFacts]:
    status = shipped_status_list()
    if args.status_list:
        status = status.merged(load_status_file(args.status_list))
    roots = load_roots_file(args.roots) if args.roots else google_hardware_roots()
    policy = AndroidPolicy((AppIdentity(args.package, frozenset(_digest(d) for d in args.signer_digest)),),
                           min_os_patch_level=args.min_os_patch_level)
    return verify_android(_read(args.chain, "--chain"), challenge=_b64(args.challenge_b64, "--challenge-b64"),
                          expected_public_key=_csr_key(args.csr) if args.csr else None, policy=policy,
                          at=_time(args.at), roots=roots, status=status, software_roots=google_software_roots())


def _ios(args: argparse.Namespace) -> Verdict[IosFacts]:
    roots = load_roots_file(args.roots) if args.roots else apple_app_attestation_roots()
    attestation = _cbor_or_base64(_read(args.attestation, "--attestation"), args.attestation)
    return verify_ios_attestation(attestation, key_id=_b64(args.key_id, "--key-id"),
                                  client_data_hash=_b64(args.client_data_hash, "--client-data-hash"),
                                  app_ids=[args.app_id], environment=args.environment, at=_time(args.at),
                                  roots=roots)


RUNNERS: dict[str, Callable[[argparse.Namespace], Verdict[Any]]] = {"android": _android, "ios": _ios}


def run_attest(args: argparse.Namespace, out: Any = None, err: Any = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        verdict = RUNNERS[args.attest_platform](args)
    except (InputError, RootsError, StatusListError) as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return EXIT_USAGE
    print(json.dumps({"platform": args.attest_platform, **verdict.to_json()}, indent=2), file=out)
    return EXIT_OK if verdict.ok else EXIT_REFUSED
