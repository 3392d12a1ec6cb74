"""``mtls-proxy pki``: the command-line face of :class:`~mtls_proxy.pki.store.PkiStore`.

Only argument handling and printing live here. :func:`run_pki` returns an exit code and
never calls ``sys.exit``, so the main CLI (and tests) can embed it. Every refusal is one
line on stderr, ``mtls-proxy pki: error: ...``, with exit code 1; a missing subcommand
is a usage error (2), like argparse's own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TextIO

from mtls_proxy.pki.pins import PIN_FORMATS, is_valid_host, render
from mtls_proxy.pki.pkcs12 import P12_PROFILES, generate_password
from mtls_proxy.pki.store import (
    DEFAULT_CA_DAYS,
    DEFAULT_CLIENT_DAYS,
    DEFAULT_CRL_DAYS,
    DEFAULT_ISSUING_CA_DAYS,
    DEFAULT_ORG,
    DEFAULT_SERVER_DAYS,
    INIT_KEY_TYPES,
    REVOCATION_REASONS,
    SERVER_MODES,
    ImportedCa,
    PkiError,
    PkiStore,
    load_ca_for_import,
    load_private_key,
)

PROG = "mtls-proxy pki"
DEFAULT_DIR = "./pki"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def add_pki_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``pki`` command and its subcommands to the main CLI's subparsers.

    ``--dir`` is accepted before or after the subcommand (``pki --dir X list`` and
    ``pki list --dir X``); the parsed namespace carries ``pki_dir`` and ``pki_command``.
    """
    pki = subparsers.add_parser(
        "pki",
        help="manage the private CA: device certificates, server certificate, CRL, pins",
        description="Manage the private PKI of the proxy: a client CA for the devices, the server "
        "certificate, the CRL the proxy reloads on SIGHUP, and the pins to ship in the apps.",
    )
    pki.add_argument(
        "--dir", dest="pki_dir", metavar="DIR", default=DEFAULT_DIR, help=f"PKI directory (default {DEFAULT_DIR})"
    )
    # Subcommands re-declare --dir with SUPPRESS so a value given after the subcommand wins
    # and an absent one does not reset the value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir", dest="pki_dir", metavar="DIR", default=argparse.SUPPRESS, help=f"PKI directory (default {DEFAULT_DIR})"
    )
    unlock = argparse.ArgumentParser(add_help=False)
    unlock.add_argument(
        "--ca-passphrase-file",
        metavar="FILE",
        help="file holding the passphrase of the CA keys (needed when init was given one)",
    )
    sub = pki.add_subparsers(dest="pki_command", metavar="SUBCOMMAND")

    p = sub.add_parser("init", parents=[common], help="create the client CA (and server CA); refuses an existing PKI")
    p.add_argument(
        "--key-type", choices=INIT_KEY_TYPES, default="ec-p256", help="key type of every key (default ec-p256)"
    )
    p.add_argument(
        "--ca-passphrase-file", metavar="FILE", help="encrypt the CA keys with the passphrase in FILE (first line)"
    )
    p.add_argument(
        "--server",
        dest="server_mode",
        choices=SERVER_MODES,
        default="ca",
        help="'ca' (default): a server CA signs the server cert, so apps trust and pin the CA and the leaf can "
        "rotate without an app update; 'self-signed': no server CA",
    )
    p.add_argument("--org", default=DEFAULT_ORG, help=f"organisation name in every subject (default {DEFAULT_ORG})")
    p.add_argument("--ca-days", type=int, default=DEFAULT_CA_DAYS, help=f"CA validity (default {DEFAULT_CA_DAYS})")
    p.add_argument("--import-ca", metavar="CERT",
                   help="use this existing client CA (PEM or DER; the CA first, then its issuers) instead of a new one")
    p.add_argument("--ca-key", metavar="KEY", help="the private key of --import-ca (PEM; encrypted: the CA passphrase)")
    p.add_argument("--import-server-ca", metavar="CERT", help="use this existing server CA instead of a new one")
    p.add_argument("--server-ca-key", metavar="KEY", help="the private key of --import-server-ca (PEM)")
    p.add_argument("--no-x509-strict", dest="x509_strict", action="store_false",
                   help="import a client CA that only works with the proxy's tls.x509_strict: false")
    p.add_argument("--issuing-ca", action="store_true",
                   help="also create an issuing intermediate under the client CA (issuing-ca.pem/.key, key "
                   "unencrypted) for the enrollment service, so ca.key can stay offline")
    p.add_argument("--issuing-ca-days", type=int, default=DEFAULT_ISSUING_CA_DAYS,
                   help=f"issuing CA validity (default {DEFAULT_ISSUING_CA_DAYS})")

    p = sub.add_parser("issuing-ca", parents=[common, unlock],
                       help="issue (or with --force replace) the issuing intermediate of an existing PKI")
    p.add_argument("--days", type=int, default=DEFAULT_ISSUING_CA_DAYS,
                   help=f"validity (default {DEFAULT_ISSUING_CA_DAYS})")
    p.add_argument("--force", action="store_true", help="replace an existing issuing CA")

    p = sub.add_parser("issue-server", parents=[common, unlock], help="issue the server certificate for the proxy")
    p.add_argument("--dns", action="append", default=[], metavar="NAME", help="DNS name (repeatable)")
    p.add_argument("--ip", action="append", default=[], metavar="IP", help="IP address (repeatable)")
    p.add_argument("--days", type=int, default=DEFAULT_SERVER_DAYS, help=f"validity (default {DEFAULT_SERVER_DAYS})")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--reuse-key", action="store_true", help="keep server.key so the leaf pin stays the same")
    keys.add_argument("--key", metavar="FILE", help="use this unencrypted PEM key (e.g. server-backup.key)")

    p = sub.add_parser("issue-client", parents=[common, unlock], help="issue one device certificate")
    p.add_argument("--name", required=True, help="device/install name: the certificate CN and file name")
    p.add_argument("--days", type=int, default=DEFAULT_CLIENT_DAYS, help=f"validity (default {DEFAULT_CLIENT_DAYS})")
    p.add_argument("--force", action="store_true", help="issue even if a valid certificate has this name (renewal)")
    p.add_argument("--p12", metavar="FILE", help="also write a PKCS#12 bundle (key, cert, client CA) to FILE")
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("--password", help="PKCS#12 password (visible in `ps`; prefer --password-file; with "
                    "neither, a random one is generated and printed once)")
    pw.add_argument("--password-file", metavar="FILE", help="file holding the PKCS#12 password (first line)")
    p.add_argument(
        "--p12-profile",
        choices=P12_PROFILES,
        default="compat",
        help="'compat' (default): 3DES + SHA-1 MAC, imports on Android and iOS; 'modern': AES-256 + SHA-256 MAC",
    )

    p = sub.add_parser("revoke", parents=[common, unlock], help="revoke a device certificate and rewrite the CRL")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--serial", help="serial in hex, as `pki list` prints it")
    target.add_argument("--name", help="revoke every unrevoked certificate with this name")
    p.add_argument("--reason", choices=list(REVOCATION_REASONS), default="unspecified", help="CRL reason code")
    p.add_argument("--crl-days", type=int, default=DEFAULT_CRL_DAYS, help=f"CRL validity (default {DEFAULT_CRL_DAYS})")

    p = sub.add_parser("crl", parents=[common, unlock], help="re-sign crl.pem (run before its nextUpdate)")
    p.add_argument("--days", type=int, default=DEFAULT_CRL_DAYS, help=f"CRL validity (default {DEFAULT_CRL_DAYS})")

    p = sub.add_parser("list", parents=[common], help="list device certificates and their status")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("pins", parents=[common], help="print server pins for Android, OkHttp, iOS, TrustKit")
    p.add_argument(
        "--format", dest="pin_format", choices=PIN_FORMATS, default="raw", help="output format (default raw)"
    )
    p.add_argument("--host", help="pinned host name (default: the server certificate's first DNS name)")
    p.add_argument(
        "--expiration",
        type=dt.date.fromisoformat,
        metavar="YYYY-MM-DD",
        help="date after which apps stop enforcing the pins (default: one year from today)",
    )


def run_pki(args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the parsed ``pki`` command; return the exit code (never exits)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    command = getattr(args, "pki_command", None)
    handler = _HANDLERS.get(command or "")
    if handler is None:
        err.write(f"{PROG}: error: choose a subcommand: {', '.join(_HANDLERS)}\n")
        return EXIT_USAGE
    try:
        return handler(args, out)
    except PkiError as exc:
        err.write(f"{PROG}: error: {exc}\n")
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        err.write(f"{PROG}: error: {where}{exc.strerror or exc}\n")
    return EXIT_ERROR


def _read_secret(path: str, what: str) -> bytes:
    """First line of ``path`` (a trailing newline from ``echo`` is not part of the secret)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read {what} file {path}: {exc.strerror}") from None
    secret = raw.split(b"\n", 1)[0].rstrip(b"\r")
    if not secret:
        raise PkiError(f"{what} file {path} is empty")
    return secret


def _store(args: argparse.Namespace) -> PkiStore:
    passphrase_file = getattr(args, "ca_passphrase_file", None)
    passphrase = _read_secret(passphrase_file, "CA passphrase") if passphrase_file else None
    return PkiStore(args.pki_dir, passphrase=passphrase)


def _imported(args: argparse.Namespace, cert_arg: str, key_arg: str, role: str) -> ImportedCa | None:
    cert, key = getattr(args, cert_arg), getattr(args, key_arg)
    flag, key_flag = f"--{cert_arg.replace('_', '-')}", f"--{key_arg.replace('_', '-')}"
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise PkiError(f"{flag} and {key_flag} go together")
    passphrase = _read_secret(args.ca_passphrase_file, "CA passphrase") if args.ca_passphrase_file else None
    return load_ca_for_import(cert, key, passphrase=passphrase, role=role, strict=args.x509_strict)


def _cmd_init(args: argparse.Namespace, out: TextIO) -> int:
    store = _store(args)
    client_ca = _imported(args, "import_ca", "ca_key", "client")
    server_ca = _imported(args, "import_server_ca", "server_ca_key", "server")
    store.init(key_type=args.key_type, server_mode=args.server_mode, org=args.org, ca_days=args.ca_days,
               import_ca=client_ca, import_server_ca=server_ca, issuing_ca=args.issuing_ca,
               issuing_ca_days=args.issuing_ca_days)
    out.write(f"initialised PKI in {store.directory} ({args.key_type}, server mode {args.server_mode})\n")
    for what, imported in (("client CA", client_ca), ("server CA", server_ca)):
        if imported is not None:
            out.write(f"  imported {what}: {imported.issued.cert.subject.rfc4514_string()}\n")
    out.write(f"  client CA (proxy client_ca): {store.ca_cert_path}\n")
    if args.issuing_ca:
        _write_issuing_ca(store, out)
    if args.server_mode == "ca":
        out.write(f"  server CA (app trust anchor): {store.server_ca_cert_path}\n")
    out.write(f"  CRL: {store.crl_path}\n")
    out.write(f"next: {PROG} --dir {store.directory} issue-server --dns api.example.com\n")
    return EXIT_OK


def _write_issuing_ca(store: PkiStore, out: TextIO) -> None:
    out.write(f"  issuing CA (enrollment service): {store.issuing_ca_cert_path}, key {store.issuing_ca_key_path}\n"
              f"  keep {store.ca_key_path} offline: the service needs only the issuing CA's key\n")


def _cmd_issuing_ca(args: argparse.Namespace, out: TextIO) -> int:
    store = _store(args)
    issued = store.issue_issuing_ca(days=args.days, force=args.force)
    out.write(f"issued issuing CA, serial {issued.cert.serial_number:x}, "
              f"valid until {issued.cert.not_valid_after_utc:%Y-%m-%d}\n")
    _write_issuing_ca(store, out)
    return EXIT_OK


def _cmd_issue_server(args: argparse.Namespace, out: TextIO) -> int:
    store = _store(args)
    key = load_private_key(args.key) if args.key else None
    issued = store.issue_server(dns=args.dns, ips=args.ip, days=args.days, reuse_key=args.reuse_key, key=key)
    sans = ", ".join([*args.dns, *args.ip])
    out.write(
        f"issued server certificate for {sans}, serial {issued.cert.serial_number:x}, "
        f"valid until {issued.cert.not_valid_after_utc:%Y-%m-%d}\n"
        f"  chain: {store.server_cert_path}\n  key:   {store.server_key_path}\n"
    )
    return EXIT_OK


def _cmd_issue_client(args: argparse.Namespace, out: TextIO) -> int:
    store = _store(args)
    password: bytes | None = None
    generated = False
    if args.password is not None:
        password = args.password.encode("utf-8")
    elif args.password_file:
        password = _read_secret(args.password_file, "PKCS#12 password")
    elif args.p12:
        # a random one rather than whatever the operator types; shown once below, stored nowhere
        password, generated = generate_password().encode("ascii"), True
    result = store.issue_client(
        args.name,
        days=args.days,
        force=args.force,
        p12_path=args.p12,
        p12_password=password,
        p12_profile=args.p12_profile,
    )
    rec = result.record
    out.write(
        f"issued client certificate {rec.name!r}, serial {rec.serial_hex}, valid until {rec.not_after:%Y-%m-%d}\n"
        f"  cert: {result.cert_path}\n  key:  {result.key_path}\n"
    )
    if result.p12_path is not None:
        out.write(f"  p12:  {result.p12_path} ({args.p12_profile})\n")
    if generated:
        assert password is not None
        out.write(f"  p12 password (generated; shown only now, stored nowhere): {password.decode('ascii')}\n")
    return EXIT_OK


def _cmd_revoke(args: argparse.Namespace, out: TextIO) -> int:
    store = _store(args)
    revoked = store.revoke(serial=args.serial, name=args.name, reason=args.reason, crl_days=args.crl_days)
    for rec in revoked:
        out.write(f"revoked {rec.name!r} serial {rec.serial_hex}\n")
    out.write(f"wrote {store.crl_path}; reload the proxy (SIGHUP) to enforce it\n")
    return EXIT_OK


def _cmd_crl(args: argparse.Namespace, out: TextIO) -> int:
    store = _store(args)
    crl = store.write_crl(days=args.days)
    out.write(f"wrote {store.crl_path}: {len(crl)} revoked, next update {crl.next_update_utc:%Y-%m-%d %H:%M} UTC\n")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    store = _store(args)
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "name": r.name,
            "serial": r.serial_hex,
            "not_after": r.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "status": r.status_at(now),
        }
        for r in store.records()
    ]
    if args.json:
        out.write(json.dumps(rows, indent=2) + "\n")
        return EXIT_OK
    headers = {"name": "NAME", "serial": "SERIAL", "not_after": "NOT_AFTER", "status": "STATUS"}
    widths = {k: max([len(v), *(len(row[k]) for row in rows)]) for k, v in headers.items()}
    for row in [headers, *rows]:
        out.write("  ".join(row[k].ljust(widths[k]) for k in headers).rstrip() + "\n")
    return EXIT_OK


def _cmd_pins(args: argparse.Namespace, out: TextIO) -> int:
    store = _store(args)
    pin_set = store.pins(host=args.host, expiration=args.expiration)
    if args.pin_format != "raw" and not is_valid_host(pin_set.host):
        raise PkiError(f"{pin_set.host!r} is not a DNS name the platforms can pin; pass --host NAME")
    out.write(render(pin_set, args.pin_format))
    return EXIT_OK


_HANDLERS = {
    "init": _cmd_init,
    "issuing-ca": _cmd_issuing_ca,
    "issue-server": _cmd_issue_server,
    "issue-client": _cmd_issue_client,
    "revoke": _cmd_revoke,
    "crl": _cmd_crl,
    "list": _cmd_list,
    "pins": _cmd_pins,
}
