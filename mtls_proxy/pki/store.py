"""The PKI directory: two CAs, the server certificate, one certificate per device, a CRL.

Layout of a directory made by :meth:`PkiStore.init` (private files are 0600)::

    index.json          what was issued: settings, server record, one record per device cert
    ca.pem, ca.key      client (device) CA: the proxy's ``client_ca``; signs the CRL
    issuing-ca.pem/.key issuing intermediate under the client CA (``--issuing-ca``): the only CA
                        key the enrollment service holds, so ca.key can stay offline
    server-ca.pem/.key  server CA (``--server ca`` only): the app's trust anchor
    server.pem/.key     server chain (leaf [+ server CA]) and key for the proxy's listener
    server-backup.key   offline backup key whose pin ships in the app (self-signed mode)
    crl.pem             revoked device serials, signed by the client CA
    clients/NAME.pem/.key

Every mutating method validates and builds everything in memory first and then writes
all files through :class:`~mtls_proxy.pki._fs.StagedWrites`, so a refused operation
(duplicate name, unknown serial, wrong passphrase, unwritable directory) leaves the
directory exactly as it was. Methods raise :class:`PkiError` with an operator-facing
message; only the CLI turns that into an exit code.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mtls_proxy.certs import is_ca, is_self_signed, load_certificates, spki_sha256
from mtls_proxy.pki import _fs
from mtls_proxy.pki.pins import ROLE_BACKUP, ROLE_CA, ROLE_LEAF, Pin, PinSet, is_valid_host, spki_sha256_of_key
from mtls_proxy.pki.pkcs12 import P12_PROFILES, export_pkcs12
from mtls_proxy.pki.x509 import Issued, PrivateKey, generate_key, issue_ca, issue_client, issue_server, random_serial
from mtls_proxy.x509_strict import strict_ca_problems

INDEX_FILE = "index.json"
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CA_CERT = "server-ca.pem"
SERVER_CA_KEY = "server-ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
BACKUP_KEY = "server-backup.key"
CRL_FILE = "crl.pem"
ISSUING_CA_CERT = "issuing-ca.pem"
ISSUING_CA_KEY = "issuing-ca.key"
CLIENTS_DIR = "clients"

#: Version of the ``index.json`` layout; a newer file is refused rather than misread.
INDEX_FORMAT = 1

DEFAULT_ORG = "mtls-proxy"
#: Key types ``init`` offers (the leaves use the same type as the PKI).
INIT_KEY_TYPES = ("ec-p256", "rsa-2048", "rsa-3072")
#: ``ca``: a server CA signs the server certificate (the app trusts and pins the CA, the
#: leaf can rotate freely). ``self-signed``: no server CA (the app trusts the leaf itself).
SERVER_MODES = ("ca", "self-signed")

DEFAULT_CA_DAYS = 3650
#: The issuing intermediate's key lives on an online service: rotate it far more often than the root.
DEFAULT_ISSUING_CA_DAYS = 730
DEFAULT_SERVER_DAYS = 365
#: Short device validity limits how long an extracted certificate stays useful.
DEFAULT_CLIENT_DAYS = 90
#: A CRL past its nextUpdate makes OpenSSL reject *every* client, so the default leaves
#: a month to re-run ``pki crl`` (from cron) and reload the proxy.
DEFAULT_CRL_DAYS = 30
DEFAULT_PIN_DAYS = 365

#: RFC 5280 reason names (as ``openssl crl -text`` prints them, camelCase) -> flag.
#: ``unspecified`` writes no reason extension, as RFC 5280 recommends.
REVOCATION_REASONS: dict[str, x509.ReasonFlags | None] = {
    "unspecified": None,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}

STATUS_VALID = "valid"
STATUS_EXPIRED = "expired"
STATUS_REVOKED = "revoked"

# A device name becomes a file name and a certificate CN: no path separators, no leading dot.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class PkiError(Exception):
    """An operation was refused; the message is written for the operator."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fmt_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime(_TIME_FORMAT)


def _parse_time(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=dt.UTC)


def parse_serial(text: str | int) -> int:
    """A serial as ``list``/``openssl`` print it: hex, optionally ``0x``-prefixed or colon-separated.

    Raises:
        PkiError: not a positive hexadecimal number.
    """
    if isinstance(text, int):
        if text <= 0:
            raise PkiError(f"invalid serial {text}: must be positive")
        return text
    cleaned = text.strip().lower().replace(":", "")
    cleaned = cleaned.removeprefix("0x")
    if not cleaned or not re.fullmatch(r"[0-9a-f]+", cleaned) or int(cleaned, 16) == 0:
        raise PkiError(f"invalid serial {text!r}: expected a hexadecimal number as printed by `pki list`")
    return int(cleaned, 16)


def validate_name(name: str) -> str:
    """Check a device name; it becomes ``clients/NAME.pem`` and the certificate's CN."""
    if not _NAME_RE.match(name):
        raise PkiError(
            f"invalid name {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ @ + - (not starting with . _ @ + -)"
        )
    return name


def _positive_days(days: float, what: str) -> float:
    if not days or days <= 0:
        raise PkiError(f"{what} must be a positive number of days, not {days!r}")
    return days


@dataclass(frozen=True)
class CertRecord:
    """One issued device certificate as ``index.json`` records it."""

    name: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    spki_sha256: str
    fingerprint_sha256: str
    revoked_at: dt.datetime | None = None
    reason: str | None = None

    @property
    def serial_hex(self) -> str:
        """Lowercase hex without separators; ``openssl crl -text`` prints the same digits in uppercase."""
        return format(self.serial, "x")

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def status_at(self, now: dt.datetime | None = None) -> str:
        """``revoked`` wins over ``expired``: a revoked cert must stay on the CRL."""
        if self.revoked_at is not None:
            return STATUS_REVOKED
        if (now or _now()) >= self.not_after:
            return STATUS_EXPIRED
        return STATUS_VALID

    @classmethod
    def from_cert(cls, name: str, cert: x509.Certificate) -> CertRecord:
        return cls(
            name=name,
            serial=cert.serial_number,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            spki_sha256=spki_sha256(cert),
            fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "serial": self.serial_hex,
            "not_before": _fmt_time(self.not_before),
            "not_after": _fmt_time(self.not_after),
            "status": STATUS_REVOKED if self.is_revoked else STATUS_VALID,
            "revoked_at": _fmt_time(self.revoked_at) if self.revoked_at else None,
            "reason": self.reason,
            "spki_sha256": self.spki_sha256,
            "fingerprint_sha256": self.fingerprint_sha256,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CertRecord:
        revoked = data["status"] == STATUS_REVOKED
        if revoked and not data.get("revoked_at"):
            raise ValueError(f"revoked certificate {data['serial']} has no revoked_at")
        return cls(
            name=str(data["name"]),
            serial=int(data["serial"], 16),
            not_before=_parse_time(data["not_before"]),
            not_after=_parse_time(data["not_after"]),
            spki_sha256=str(data.get("spki_sha256", "")),
            fingerprint_sha256=str(data.get("fingerprint_sha256", "")),
            revoked_at=_parse_time(data["revoked_at"]) if revoked else None,
            reason=data.get("reason"),
        )


@dataclass(frozen=True)
class ServerRecord:
    """The current server certificate (re-issuing replaces it)."""

    serial: int
    not_after: dt.datetime
    dns: tuple[str, ...]
    ips: tuple[str, ...]
    spki_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": format(self.serial, "x"),
            "not_after": _fmt_time(self.not_after),
            "dns": list(self.dns),
            "ips": list(self.ips),
            "spki_sha256": self.spki_sha256,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerRecord:
        return cls(
            serial=int(data["serial"], 16),
            not_after=_parse_time(data["not_after"]),
            dns=tuple(data.get("dns", ())),
            ips=tuple(data.get("ips", ())),
            spki_sha256=str(data.get("spki_sha256", "")),
        )


@dataclass(frozen=True)
class Index:
    """The parsed ``index.json``: immutable, so a command builds the next one and writes it once."""

    org: str
    key_type: str
    server_mode: str
    ca_key_encrypted: bool
    crl_number: int
    created: dt.datetime
    server: ServerRecord | None = None
    certs: tuple[CertRecord, ...] = field(default=())

    def to_bytes(self) -> bytes:
        data = {
            "format": INDEX_FORMAT,
            "org": self.org,
            "key_type": self.key_type,
            "server_mode": self.server_mode,
            "ca_key_encrypted": self.ca_key_encrypted,
            "crl_number": self.crl_number,
            "created": _fmt_time(self.created),
            "server": self.server.to_json() if self.server else None,
            "certs": [c.to_json() for c in self.certs],
        }
        return (json.dumps(data, indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Index:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
        if data.get("format") != INDEX_FORMAT:
            raise ValueError(f"unsupported format {data.get('format')!r} (this version reads {INDEX_FORMAT})")
        if data["server_mode"] not in SERVER_MODES:
            raise ValueError(f"unknown server_mode {data['server_mode']!r}")
        return cls(
            org=str(data["org"]),
            key_type=str(data["key_type"]),
            server_mode=data["server_mode"],
            ca_key_encrypted=bool(data["ca_key_encrypted"]),
            crl_number=int(data["crl_number"]),
            created=_parse_time(data["created"]),
            server=ServerRecord.from_json(data["server"]) if data.get("server") else None,
            certs=tuple(CertRecord.from_json(c) for c in data["certs"]),
        )

    def find_serial(self, serial: int) -> CertRecord | None:
        return next((c for c in self.certs if c.serial == serial), None)


@dataclass(frozen=True)
class ClientIssue:
    """What :meth:`PkiStore.issue_client` produced."""

    issued: Issued
    record: CertRecord
    cert_path: Path
    key_path: Path
    p12_path: Path | None = None


def build_revocation_list(
    issuer: Issued,
    revoked: Sequence[CertRecord],
    *,
    number: int,
    days: float = DEFAULT_CRL_DAYS,
    now: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL over ``revoked`` with a CRL number and, where known, the reason code.

    ``x509.build_crl`` numbers CRLs by timestamp and has no reasons; the PKI keeps a
    monotonic counter in the index instead, as RFC 5280 intends.
    """
    now = now or _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now - dt.timedelta(minutes=5))  # tolerate relying parties with a slow clock
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for record in revoked:
        assert record.revoked_at is not None
        entry = x509.RevokedCertificateBuilder().serial_number(record.serial).revocation_date(record.revoked_at)
        flag = REVOCATION_REASONS.get(record.reason or "unspecified")
        if flag is not None:
            entry = entry.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(issuer.key, hashes.SHA256())


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Load an unencrypted PEM private key (server and backup keys are never encrypted:
    the proxy must start unattended).

    Raises:
        PkiError: missing, encrypted, malformed or of an unsupported type.
    """
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise PkiError(f"{path} is missing") from None
    except (ValueError, TypeError) as exc:
        raise PkiError(f"cannot load {path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"{path}: unsupported key type {type(key).__name__}")
    return key


def _pem(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


@dataclass(frozen=True)
class ImportedCa:
    """An existing CA brought into a new PKI: its certificate and key, and the issuers above it."""

    issued: Issued
    issuers: tuple[x509.Certificate, ...] = ()  # up to a self-signed root; empty for a root

    def chain_pem(self) -> bytes:
        return self.issued.cert_pem() + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.issuers)


def load_ca_for_import(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str], *,
                       passphrase: bytes | None, role: str, strict: bool = True) -> ImportedCa:
    """Read and validate an existing CA for ``init --import-ca`` (``role`` "client") or ``--import-server-ca``.

    The checks are the proxy's own (``mtls-proxy check``): a CA certificate (basicConstraints
    CA:TRUE), not expired, its key matching, a chain in CERT (CA first) that ends self-signed;
    for the client CA also what ``tls.x509_strict: true`` would refuse (unless ``strict`` is false).
    An encrypted key is decrypted with the PKI's CA passphrase, and stored encrypted with it.
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    try:
        certs = load_certificates(cert_path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"{cert_path} is missing") from None
    except ValueError:
        raise PkiError(f"{cert_path}: no PEM or DER certificate could be read") from None
    cert, issuers = certs[0], tuple(certs[1:])
    subject = cert.subject.rfc4514_string()
    if not is_ca(cert):
        raise PkiError(f"{cert_path}: {subject!r} is not a CA certificate (basicConstraints CA:TRUE)")
    if cert.not_valid_after_utc <= _now():
        raise PkiError(f"{cert_path}: the CA {subject!r} expired on {_fmt_time(cert.not_valid_after_utc)}")
    chain = [cert, *issuers]
    for child, parent in itertools.pairwise(chain):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise PkiError(f"{cert_path}: {child.subject.rfc4514_string()!r} is not issued by the next certificate"
                           f" in the file, {parent.subject.rfc4514_string()!r}; give the CA first, then its issuers"
                           ) from None
    if not is_self_signed(chain[-1]):
        raise PkiError(f"{cert_path}: {chain[-1].subject.rfc4514_string()!r} is not self-signed: append its issuers"
                       " up to the root to the file, so the proxy and the apps can anchor the chain")
    if role == "client" and strict:
        for c in chain:
            for problem in strict_ca_problems(c):
                raise PkiError(f"{cert_path}: {problem} (import it anyway with --no-x509-strict)")
    try:
        raw = key_path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{key_path} is missing") from None
    try:
        key = serialization.load_pem_private_key(raw, password=passphrase)
    except TypeError:  # not encrypted but a passphrase given, or encrypted and none given
        try:
            key = serialization.load_pem_private_key(raw, password=None)
        except TypeError:
            raise PkiError(f"{key_path} is encrypted; pass its passphrase with --ca-passphrase-file") from None
        except ValueError as exc:
            raise PkiError(f"{key_path}: not a PEM private key ({exc})") from None
    except ValueError:
        raise PkiError(f"{key_path}: wrong passphrase, or not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"{key_path}: unsupported key type {type(key).__name__}")
    if spki_sha256_of_key(key.public_key()) != spki_sha256(cert):
        raise PkiError(f"{key_path} is not the key of {cert_path} ({subject!r})")
    return ImportedCa(Issued(cert=cert, key=key), issuers)


class PkiStore:
    """A PKI directory. Cheap to construct; every method re-reads the directory.

    Args:
        directory: the PKI directory (``--dir``).
        passphrase: unlocks the CA keys when ``init`` encrypted them.
    """

    def __init__(self, directory: str | os.PathLike[str], *, passphrase: bytes | None = None) -> None:
        self.directory = Path(directory)
        self._passphrase = passphrase

    # -- paths -------------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.directory / INDEX_FILE

    @property
    def ca_cert_path(self) -> Path:
        return self.directory / CA_CERT

    @property
    def ca_key_path(self) -> Path:
        return self.directory / CA_KEY

    @property
    def server_ca_cert_path(self) -> Path:
        return self.directory / SERVER_CA_CERT

    @property
    def server_ca_key_path(self) -> Path:
        return self.directory / SERVER_CA_KEY

    @property
    def server_cert_path(self) -> Path:
        return self.directory / SERVER_CERT

    @property
    def server_key_path(self) -> Path:
        return self.directory / SERVER_KEY

    @property
    def backup_key_path(self) -> Path:
        return self.directory / BACKUP_KEY

    @property
    def crl_path(self) -> Path:
        return self.directory / CRL_FILE

    @property
    def issuing_ca_cert_path(self) -> Path:
        return self.directory / ISSUING_CA_CERT

    @property
    def issuing_ca_key_path(self) -> Path:
        return self.directory / ISSUING_CA_KEY

    @property
    def clients_dir(self) -> Path:
        return self.directory / CLIENTS_DIR

    def client_cert_path(self, name: str) -> Path:
        return self.clients_dir / f"{validate_name(name)}.pem"

    def client_key_path(self, name: str) -> Path:
        return self.clients_dir / f"{validate_name(name)}.key"

    @property
    def server_trust_anchor_path(self) -> Path:
        """What an app must trust: the server CA, or the self-signed server certificate."""
        return self.server_ca_cert_path if self.index().server_mode == "ca" else self.server_cert_path

    # -- reading -----------------------------------------------------------------------

    def is_initialised(self) -> bool:
        return self.index_path.is_file()

    def index(self) -> Index:
        """Read ``index.json``.

        Raises:
            PkiError: the directory is missing, not initialised, or the index is corrupt.
        """
        d = self.directory
        if not d.exists():
            raise PkiError(f"PKI directory {d} does not exist; create one with `mtls-proxy pki init --dir {d}`")
        if not d.is_dir():
            raise PkiError(f"{d} is not a directory")
        if not self.index_path.is_file():
            raise PkiError(
                f"{d} is not an initialised PKI directory (no {INDEX_FILE}); run `mtls-proxy pki init --dir {d}`"
            )
        try:
            return Index.from_bytes(self.index_path.read_bytes())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PkiError(f"{self.index_path} is corrupt: {exc}") from exc

    def records(self) -> tuple[CertRecord, ...]:
        """Every device certificate ever issued, oldest first."""
        return self.index().certs

    def client_ca_cert(self) -> x509.Certificate:
        return self._load_cert(self.ca_cert_path)

    def client_ca(self) -> Issued:
        """The client CA with its key (needs the passphrase if the key is encrypted)."""
        return self._load_issued(self.ca_cert_path, self.ca_key_path, self.index())

    # -- commands ----------------------------------------------------------------------

    def init(
        self,
        *,
        key_type: str = "ec-p256",
        server_mode: str = "ca",
        org: str = DEFAULT_ORG,
        passphrase: bytes | None = None,
        ca_days: float = DEFAULT_CA_DAYS,
        crl_days: float = DEFAULT_CRL_DAYS,
        import_ca: ImportedCa | None = None,
        import_server_ca: ImportedCa | None = None,
        issuing_ca: bool = False,
        issuing_ca_days: float = DEFAULT_ISSUING_CA_DAYS,
    ) -> None:
        """Create the client CA (and the server CA in ``ca`` mode) and an empty CRL.

        ``import_ca`` / ``import_server_ca`` (from :func:`load_ca_for_import`) bring an existing
        CA instead of minting one. ``issuing_ca`` also creates the issuing intermediate under the
        client CA (see :meth:`issue_issuing_ca`). Refuses an already initialised or non-empty
        directory: overwriting a CA would orphan every device certificate in the field. The
        directory itself may already exist when empty (a mounted volume); otherwise it is
        created (0700), and so are missing parent directories (with the usual umask).
        """
        if key_type not in INIT_KEY_TYPES:
            raise PkiError(f"unknown key type {key_type!r}; choose one of {', '.join(INIT_KEY_TYPES)}")
        if server_mode not in SERVER_MODES:
            raise PkiError(f"unknown server mode {server_mode!r}; choose one of {', '.join(SERVER_MODES)}")
        if import_server_ca is not None and server_mode != "ca":
            raise PkiError("--import-server-ca needs --server ca (a self-signed server has no server CA)")
        if not org or len(org) > 64:
            raise PkiError("--org must be 1-64 characters (X.520 limit)")
        _positive_days(ca_days, "--ca-days")
        _positive_days(crl_days, "--crl-days")
        if issuing_ca:
            _positive_days(issuing_ca_days, "--issuing-ca-days")
            if import_ca is None and issuing_ca_days > ca_days:
                raise PkiError(f"--issuing-ca-days {issuing_ca_days:g} would outlive the client CA "
                               f"(--ca-days {ca_days:g})")
        passphrase = passphrase if passphrase is not None else self._passphrase
        if passphrase is not None and not passphrase:
            raise PkiError("the CA passphrase is empty")

        d = self.directory
        staged = _fs.StagedWrites()
        if d.exists() or d.is_symlink():
            if not d.is_dir():
                raise PkiError(f"{d} exists and is not a directory")
            if self.index_path.exists():
                raise PkiError(f"{d} is already an initialised PKI directory; refusing to overwrite its CA")
            if any(d.iterdir()):
                raise PkiError(f"{d} is not empty; refusing to initialise a PKI over existing files")
            if not os.access(d, os.W_OK | os.X_OK):
                raise PkiError(f"{d} is not writable")
        else:
            if d.parent.exists() and not d.parent.is_dir():
                raise PkiError(f"cannot create {d}: {d.parent} is not a directory")
            d.parent.mkdir(parents=True, exist_ok=True)
            staged.mkdir(d)
        staged.mkdir(self.clients_dir)

        client_ca = import_ca.issued if import_ca else issue_ca({"CN": f"{org} device CA", "O": org},
                                                                key_type=key_type, days=ca_days)
        now = _now()
        index = Index(
            org=org,
            key_type=key_type,
            server_mode=server_mode,
            ca_key_encrypted=passphrase is not None,
            crl_number=1,
            created=now,
        )
        crl = build_revocation_list(client_ca, (), number=index.crl_number, days=crl_days, now=now)
        staged.add(self.ca_key_path, _key_pem(client_ca.key, passphrase), private=True)
        staged.add(self.ca_cert_path, import_ca.chain_pem() if import_ca else client_ca.cert_pem(), private=False)
        if server_mode == "ca":
            server_ca = import_server_ca.issued if import_server_ca else issue_ca(
                {"CN": f"{org} server CA", "O": org}, key_type=key_type, days=ca_days)
            staged.add(self.server_ca_key_path, _key_pem(server_ca.key, passphrase), private=True)
            staged.add(self.server_ca_cert_path,
                       import_server_ca.chain_pem() if import_server_ca else server_ca.cert_pem(), private=False)
        if issuing_ca:
            self._stage_issuing_ca(staged, client_ca, index.org, index.key_type, issuing_ca_days)
        staged.add(self.crl_path, _pem(crl), private=False)
        staged.add(self.index_path, index.to_bytes(), private=False)
        staged.commit()
        self._passphrase = passphrase

    def issue_issuing_ca(self, *, days: float = DEFAULT_ISSUING_CA_DAYS, force: bool = False) -> Issued:
        """Issue the issuing intermediate (pathLen 0) under the client CA, e.g. for an existing PKI or to rotate it.

        Its key is written unencrypted (0600) even when the CA keys have a passphrase: the
        enrollment service loads it unattended, like the proxy's ``server.key``. That is the
        point of it: the client CA's key signs only this certificate (and its CRL), so it can
        live offline, and a stolen service key is undone by revoking one intermediate.
        An existing intermediate is replaced only with ``force`` (certificates it issued stay
        valid until they expire: keep its old certificate in the proxy's ``client_ca`` bundle).
        """
        _positive_days(days, "--days")
        with self._locked():
            index = self.index()
            if self.issuing_ca_cert_path.exists() and not force:
                raise PkiError(f"{self.issuing_ca_cert_path} exists; pass --force to replace the issuing CA")
            ca = self._load_issued(self.ca_cert_path, self.ca_key_path, index)
            staged = _fs.StagedWrites()
            issued = self._stage_issuing_ca(staged, ca, index.org, index.key_type, days)
            staged.commit()
        return issued

    def issuing_ca(self) -> Issued:
        """The issuing intermediate with its key (what the enrollment service signs with)."""
        cert = self._load_cert(self.issuing_ca_cert_path)
        key = load_private_key(self.issuing_ca_key_path)
        if spki_sha256_of_key(key.public_key()) != spki_sha256(cert):
            raise PkiError(f"{self.issuing_ca_key_path} does not belong to {self.issuing_ca_cert_path}")
        return Issued(cert=cert, key=key)

    def _stage_issuing_ca(self, staged: _fs.StagedWrites, parent: Issued, org: str, key_type: str,
                          days: float) -> Issued:
        self._check_within(parent.cert, days, "issuing CA")
        issued = issue_ca({"CN": f"{org} device issuing CA", "O": org}, key_type=key_type, days=days,
                          issuer=parent, path_length=0)
        staged.add(self.issuing_ca_key_path, issued.key_pem(), private=True)
        staged.add(self.issuing_ca_cert_path, issued.cert_pem(), private=False)
        return issued

    def issue_server(
        self,
        *,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        days: float = DEFAULT_SERVER_DAYS,
        reuse_key: bool = False,
        key: PrivateKey | None = None,
    ) -> Issued:
        """Issue (or re-issue) the server certificate: serverAuth EKU, the given SANs.

        ``reuse_key`` keeps ``server.key`` so the leaf pin shipped in apps stays valid
        across renewals; ``key`` issues for a given key (e.g. the backup key once the
        primary is retired).
        """
        dns = tuple(dns)
        ips = tuple(ips)
        if not dns and not ips:
            raise PkiError("give at least one --dns NAME or --ip ADDRESS for the server certificate")
        for name in dns:
            if not is_valid_host(name):
                raise PkiError(f"invalid DNS name {name!r}")
        for ip in ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise PkiError(f"invalid IP address {ip!r}") from None
        _positive_days(days, "--days")
        if reuse_key and key is not None:
            raise PkiError("choose either reuse_key or key, not both")
        with self._locked():
            index = self.index()
            if reuse_key:
                if not self.server_key_path.exists():
                    raise PkiError(f"--reuse-key: {self.server_key_path} does not exist yet")
                key = load_private_key(self.server_key_path)
            issuer: Issued | None = None
            if index.server_mode == "ca":
                issuer = self._load_issued(self.server_ca_cert_path, self.server_ca_key_path, index)
                self._check_within(issuer.cert, days, "server certificate")
            subject = {"CN": dns[0] if dns else ips[0], "O": index.org}
            issued = issue_server(subject, issuer, key=key, key_type=index.key_type, dns=dns, ips=ips, days=days)
            chain = issued.cert_pem() + (issuer.cert_pem() if issuer else b"")
            record = ServerRecord(
                serial=issued.cert.serial_number,
                not_after=issued.cert.not_valid_after_utc,
                dns=dns,
                ips=ips,
                spki_sha256=spki_sha256(issued.cert),
            )
            staged = _fs.StagedWrites()
            staged.add(self.server_key_path, issued.key_pem(), private=True)
            staged.add(self.server_cert_path, chain, private=False)
            staged.add(self.index_path, replace(index, server=record).to_bytes(), private=False)
            staged.commit()
        return issued

    def issue_client(
        self,
        name: str,
        *,
        days: float = DEFAULT_CLIENT_DAYS,
        force: bool = False,
        p12_path: str | os.PathLike[str] | None = None,
        p12_password: bytes | str | None = None,
        p12_profile: str = "compat",
    ) -> ClientIssue:
        """Issue one device certificate (clientAuth EKU, random 127-bit serial).

        A name that still has a valid (unrevoked, unexpired) certificate is refused unless
        ``force`` (renewal before expiry): one identity per install is what makes
        revoking one phone possible without touching the others.
        """
        validate_name(name)
        _positive_days(days, "--days")
        if p12_profile not in P12_PROFILES:
            raise PkiError(f"unknown PKCS#12 profile {p12_profile!r}; choose one of {', '.join(P12_PROFILES)}")
        if p12_path is not None and not p12_password:
            raise PkiError("--p12 needs a non-empty --password or --password-file (mobile importers refuse empty ones)")
        if p12_path is None and p12_password is not None:
            raise PkiError("--password/--password-file only make sense with --p12 FILE")
        with self._locked():
            index = self.index()
            now = _now()
            live = [c for c in index.certs if c.name == name and c.status_at(now) == STATUS_VALID]
            if live and not force:
                serials = ", ".join(c.serial_hex for c in live)
                raise PkiError(
                    f"a valid certificate named {name!r} already exists (serial {serials}); "
                    "revoke it first or pass --force to issue another one"
                )
            ca = self._load_issued(self.ca_cert_path, self.ca_key_path, index)
            self._check_within(ca.cert, days, "client certificate")
            serial = random_serial()
            while index.find_serial(serial) is not None:  # 2^-126 chance, but cheap to rule out
                serial = random_serial()
            issued = issue_client({"CN": name, "O": index.org}, ca, key_type=index.key_type, days=days, serial=serial)
            record = CertRecord.from_cert(name, issued.cert)
            staged = _fs.StagedWrites()
            if not self.clients_dir.is_dir():
                staged.mkdir(self.clients_dir)
            cert_path, key_path = self.client_cert_path(name), self.client_key_path(name)
            staged.add(key_path, issued.key_pem(), private=True)
            staged.add(cert_path, issued.cert_pem(), private=False)
            p12_out: Path | None = None
            if p12_path is not None:
                assert p12_password is not None
                p12_out = Path(p12_path)
                bundle = export_pkcs12(issued, ca.cert, p12_password, p12_profile)
                staged.add(p12_out, bundle, private=True)
            staged.add(self.index_path, replace(index, certs=(*index.certs, record)).to_bytes(), private=False)
            staged.commit()
        return ClientIssue(issued=issued, record=record, cert_path=cert_path, key_path=key_path, p12_path=p12_out)

    def revoke(
        self,
        *,
        serial: int | str | None = None,
        name: str | None = None,
        reason: str = "unspecified",
        crl_days: float = DEFAULT_CRL_DAYS,
    ) -> tuple[CertRecord, ...]:
        """Revoke by serial, or every unrevoked certificate of ``name``, and rewrite the CRL.

        The proxy picks the new CRL up on SIGHUP; nothing here signals it.

        Returns:
            The records as revoked.
        """
        if (serial is None) == (name is None):
            raise PkiError("revoke needs exactly one of --serial or --name")
        if reason not in REVOCATION_REASONS:
            raise PkiError(f"unknown reason {reason!r}; choose one of {', '.join(REVOCATION_REASONS)}")
        _positive_days(crl_days, "--crl-days")
        wanted = parse_serial(serial) if serial is not None else None
        with self._locked():
            index = self.index()
            if wanted is not None:
                found = index.find_serial(wanted)
                if found is None:
                    raise PkiError(f"no certificate with serial {format(wanted, 'x')} in {self.index_path}")
                if found.is_revoked:
                    raise PkiError(f"certificate {found.serial_hex} ({found.name}) is already revoked")
                targets = [found]
            else:
                assert name is not None
                named = [c for c in index.certs if c.name == name]
                if not named:
                    raise PkiError(f"no certificate named {name!r} in {self.index_path}")
                targets = [c for c in named if not c.is_revoked]
                if not targets:
                    raise PkiError(f"every certificate named {name!r} is already revoked")
            now = _now().replace(microsecond=0)
            stored_reason = None if reason == "unspecified" else reason
            done = {c.serial: replace(c, revoked_at=now, reason=stored_reason) for c in targets}
            new_index = replace(
                index,
                certs=tuple(done.get(c.serial, c) for c in index.certs),
                crl_number=index.crl_number + 1,
            )
            self._write_index_and_crl(new_index, crl_days, now)
        return tuple(done.values())

    def write_crl(self, *, days: float = DEFAULT_CRL_DAYS) -> x509.CertificateRevocationList:
        """Re-sign ``crl.pem`` (run before nextUpdate, e.g. from cron) with the next CRL number."""
        _positive_days(days, "--days")
        with self._locked():
            index = self.index()
            new_index = replace(index, crl_number=index.crl_number + 1)
            return self._write_index_and_crl(new_index, days, _now())

    def pins(self, *, host: str | None = None, expiration: dt.date | None = None) -> PinSet:
        """The pins of the server certificate and of the server CA or backup key.

        In self-signed mode the first call creates ``server-backup.key`` (0600): a pin
        for a key that does not exist would be useless. Keep that key offline; to rotate,
        ``issue-server --key server-backup.key`` (then run ``pins`` again for a new backup).
        """
        with self._locked():
            index = self.index()
            if index.server is None or not self.server_cert_path.exists():
                raise PkiError("no server certificate yet; run `mtls-proxy pki issue-server --dns NAME` first")
            leaf = self._load_cert(self.server_cert_path)
            pins = [Pin(ROLE_LEAF, spki_sha256(leaf), leaf.subject.rfc4514_string())]
            if index.server_mode == "ca":
                ca = self._load_cert(self.server_ca_cert_path)
                pins.append(Pin(ROLE_CA, spki_sha256(ca), ca.subject.rfc4514_string()))
                anchor = SERVER_CA_CERT
            else:
                pins.append(Pin(ROLE_BACKUP, self._backup_pin(index, pins[0].sha256), BACKUP_KEY))
                anchor = SERVER_CERT
        if host is None:
            host = index.server.dns[0] if index.server.dns else index.server.ips[0]
        expiration = expiration or (_now() + dt.timedelta(days=DEFAULT_PIN_DAYS)).date()
        return PinSet(
            host=host, pins=tuple(pins), server_mode=index.server_mode, expiration=expiration, trust_anchor=anchor
        )

    # -- internals ---------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.index()  # a clear error for a missing/uninitialised directory before locking it
        with _fs.locked(self.directory):
            yield

    def _write_index_and_crl(self, index: Index, days: float, now: dt.datetime) -> x509.CertificateRevocationList:
        ca = self._load_issued(self.ca_cert_path, self.ca_key_path, index)
        revoked = [c for c in index.certs if c.is_revoked]
        crl = build_revocation_list(ca, revoked, number=index.crl_number, days=days, now=now)
        staged = _fs.StagedWrites()
        staged.add(self.crl_path, _pem(crl), private=False)
        staged.add(self.index_path, index.to_bytes(), private=False)
        staged.commit()
        return crl

    def _backup_pin(self, index: Index, leaf_pin: str) -> str:
        """Load the backup key, or create one when missing or already promoted to server key."""
        if self.backup_key_path.exists():
            pin = spki_sha256_of_key(load_private_key(self.backup_key_path).public_key())
            if pin != leaf_pin:
                return pin
        key = generate_key(index.key_type)
        staged = _fs.StagedWrites()
        staged.add(self.backup_key_path, _key_pem(key), private=True)
        staged.commit()
        return spki_sha256_of_key(key.public_key())

    def _check_within(self, issuer: x509.Certificate, days: float, what: str) -> None:
        """A certificate must not outlive its CA: clients would reject it at that date anyway."""
        if _now() + dt.timedelta(days=days) > issuer.not_valid_after_utc:
            raise PkiError(
                f"a {what} valid for {days:g} days would outlive its CA (expires "
                f"{_fmt_time(issuer.not_valid_after_utc)}); use a smaller --days"
            )

    @staticmethod
    def _load_cert(path: Path) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except FileNotFoundError:
            raise PkiError(f"{path} is missing") from None
        except ValueError as exc:
            raise PkiError(f"{path} is not a PEM certificate: {exc}") from exc

    def _load_issued(self, cert_path: Path, key_path: Path, index: Index) -> Issued:
        """Load a CA and its key, decrypting with the passphrase when the PKI uses one."""
        cert = self._load_cert(cert_path)
        try:
            raw = key_path.read_bytes()
        except FileNotFoundError:
            raise PkiError(f"{key_path} is missing") from None
        if index.ca_key_encrypted and self._passphrase is None:
            raise PkiError(f"{key_path} is encrypted; pass the CA passphrase (--ca-passphrase-file)")
        if not index.ca_key_encrypted and self._passphrase is not None:
            raise PkiError(f"{key_path} is not encrypted; drop --ca-passphrase-file")
        try:
            key = serialization.load_pem_private_key(raw, password=self._passphrase)
        except ValueError:
            raise PkiError(f"wrong CA passphrase: cannot decrypt {key_path}") from None
        except TypeError as exc:  # encryption state differs from what the index says
            raise PkiError(f"cannot load {key_path}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise PkiError(f"{key_path}: unsupported key type {type(key).__name__}")
        if spki_sha256_of_key(key.public_key()) != spki_sha256(cert):
            raise PkiError(f"{key_path} does not belong to {cert_path}")
        return Issued(cert=cert, key=key)
