"""``settings.MTLS_ENROLLMENT``: read once, validated, compiled into one frozen object.

Every problem names its key path (``MTLS_ENROLLMENT['ANDROID_APPS'][0]['signer_digests']``) and
stops start-up: the views build the settings when their URLconf loads, and the system checks
(:mod:`.checks`) report the same errors for ``manage.py check``. Files are read here (the issuing
CA and its key, the attestation roots); only the status list file is re-read at each enrollment,
so a cron job can refresh it without a restart.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from mtls_proxy.attestation.android import AndroidPolicy, AppIdentity
from mtls_proxy.attestation.ios import ENVIRONMENTS
from mtls_proxy.attestation.roots import (
    RootsError,
    apple_app_attestation_roots,
    google_hardware_roots,
    google_software_roots,
    load_roots_file,
)
from mtls_proxy.attestation.status import StatusList, StatusListError, load_status_file, shipped_status_list
from mtls_proxy.certs import is_ca
from mtls_proxy.pki.store import PkiError, load_private_key
from mtls_proxy.pki.x509 import Issued

__all__ = ["DEFAULTS", "EnrollmentSettings", "get_settings", "load_settings"]

SETTING = "MTLS_ENROLLMENT"

DEFAULTS: dict[str, Any] = {
    "ISSUING_CA_CERT_FILE": None,
    "ISSUING_CA_KEY_FILE": None,
    "CA_CHAIN_FILE": None,
    "CERT_VALIDITY_DAYS": 7,
    "CRL_NEXT_UPDATE_SECONDS": 3600,
    "CHALLENGE_TTL_SECONDS": 300,
    "CHALLENGES_PER_HOUR": 10,
    "ENROLLMENTS_PER_DAY": 10,
    "ANDROID_APPS": [],
    "ANDROID_MIN_OS_PATCH_LEVEL": None,
    "ANDROID_ROOTS_FILE": None,
    "ANDROID_STATUS_FILE": None,
    "IOS_APP_IDS": [],
    "IOS_ENVIRONMENT": "production",
    "IOS_ROOTS_FILE": None,
    "USER_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
}
#: Keys without which nothing can be issued: system check errors, not warnings.
REQUIRED = ("ISSUING_CA_CERT_FILE", "ISSUING_CA_KEY_FILE")


def _where(*path: str | int) -> str:
    return SETTING + "".join(f"[{p!r}]" for p in path)


@dataclass(frozen=True)
class EnrollmentSettings:
    """The validated settings; ``issuing_ca`` holds the loaded certificate and key."""

    issuing_ca: Issued
    ca_chain: tuple[x509.Certificate, ...]
    cert_validity: dt.timedelta
    crl_next_update: dt.timedelta
    challenge_ttl: dt.timedelta
    challenges_per_hour: int
    enrollments_per_day: int
    android_policy: AndroidPolicy | None
    android_roots: tuple[x509.Certificate, ...]
    android_software_roots: tuple[x509.Certificate, ...]
    android_status_file: str | None
    ios_app_ids: tuple[str, ...]
    ios_environment: str
    ios_roots: tuple[x509.Certificate, ...]
    user_authentication_classes: tuple[type, ...]

    def android_status(self) -> StatusList:
        """The shipped snapshot merged with the configured file, read now (StatusListError when unusable)."""
        shipped = shipped_status_list()
        if self.android_status_file is None:
            return shipped
        return shipped.merged(load_status_file(self.android_status_file))

    @property
    def platforms(self) -> tuple[str, ...]:
        return (("android",) if self.android_policy else ()) + (("ios",) if self.ios_app_ids else ())


def _positive_int(conf: Mapping[str, Any], key: str, *, maximum: int) -> int:
    value = conf[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= maximum:
        raise ImproperlyConfigured(f"{_where(key)} must be an integer in 1..{maximum}, not {value!r}")
    return value


def _positive_number(conf: Mapping[str, Any], key: str, *, maximum: float) -> float:
    value = conf[key]
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= maximum:
        raise ImproperlyConfigured(f"{_where(key)} must be a number in (0, {maximum:g}], not {value!r}")
    return float(value)


def _path(conf: Mapping[str, Any], key: str) -> str | None:
    value = conf[key]
    if value is not None and (not isinstance(value, str) or not value):
        raise ImproperlyConfigured(f"{_where(key)} must be a file path string")
    return value


def _strings(value: object, where: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ImproperlyConfigured(f"{where} must be a list of strings")
    return list(value)


def _digest(text: str, where: str) -> bytes:
    """A SHA-256 digest as hex (colons allowed, as keytool prints it) or base64 (as Android's APIs print it)."""
    cleaned = text.strip().replace(":", "")
    try:
        raw = bytes.fromhex(cleaned) if len(cleaned) == 64 else base64.b64decode(cleaned, validate=True)
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 32:
        raise ImproperlyConfigured(f"{where}: {text!r} is not a SHA-256 digest (64 hex digits or base64)")
    return raw


def _android(conf: Mapping[str, Any]) -> AndroidPolicy | None:
    apps_raw = conf["ANDROID_APPS"]
    if not isinstance(apps_raw, Sequence) or isinstance(apps_raw, str):
        raise ImproperlyConfigured(f"{_where('ANDROID_APPS')} must be a list of {{'package', 'signer_digests'}}")
    apps: list[AppIdentity] = []
    for i, entry in enumerate(apps_raw):
        if not isinstance(entry, Mapping) or set(entry) != {"package", "signer_digests"}:
            raise ImproperlyConfigured(f"{_where('ANDROID_APPS', i)} must be a dict with exactly the keys "
                                       "'package' and 'signer_digests'")
        package = entry["package"]
        if not isinstance(package, str) or not package:
            raise ImproperlyConfigured(f"{_where('ANDROID_APPS', i, 'package')} must be a package name")
        where = _where("ANDROID_APPS", i, "signer_digests")
        digests = frozenset(_digest(d, where) for d in _strings(entry["signer_digests"], where))
        if not digests:
            raise ImproperlyConfigured(f"{where} must list at least one digest")
        apps.append(AppIdentity(package, digests))
    level = conf["ANDROID_MIN_OS_PATCH_LEVEL"]
    if level is not None and (not isinstance(level, int) or isinstance(level, bool) or not 200001 <= level <= 999912):
        raise ImproperlyConfigured(f"{_where('ANDROID_MIN_OS_PATCH_LEVEL')} must be YYYYMM (e.g. 202501) or None")
    return AndroidPolicy(tuple(apps), level) if apps else None


def _roots(conf: Mapping[str, Any], key: str, shipped: Callable[[], tuple[x509.Certificate, ...]]
           ) -> tuple[x509.Certificate, ...]:
    path = _path(conf, key)
    if path is None:
        return shipped()
    try:
        return load_roots_file(path)
    except RootsError as exc:
        raise ImproperlyConfigured(f"{_where(key)}: {exc}") from exc


def _load_ca(conf: Mapping[str, Any]) -> Issued:
    cert_path, key_path = _path(conf, "ISSUING_CA_CERT_FILE"), _path(conf, "ISSUING_CA_KEY_FILE")
    missing = [k for k, v in zip(REQUIRED, (cert_path, key_path), strict=True) if v is None]
    if missing:
        raise ImproperlyConfigured(f"{SETTING} needs {' and '.join(missing)} (the issuing CA from "
                                   "`mtls-proxy pki init --issuing-ca`: issuing-ca.pem and issuing-ca.key)")
    assert cert_path is not None and key_path is not None
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as exc:
        raise ImproperlyConfigured(f"{_where('ISSUING_CA_CERT_FILE')}: {cert_path}: {exc}") from exc
    try:
        key = load_private_key(key_path)
    except PkiError as exc:
        raise ImproperlyConfigured(f"{_where('ISSUING_CA_KEY_FILE')}: {exc}") from exc
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise ImproperlyConfigured(f"{_where('ISSUING_CA_KEY_FILE')}: {key_path} does not belong to {cert_path}")
    if not is_ca(cert):
        raise ImproperlyConfigured(f"{_where('ISSUING_CA_CERT_FILE')}: {cert_path} is not a CA certificate")
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise ImproperlyConfigured(f"{_where('ISSUING_CA_CERT_FILE')}: {cert_path} expired "
                                   f"{cert.not_valid_after_utc:%Y-%m-%d}")
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):  # pragma: no cover - load_private_key
        raise ImproperlyConfigured(f"{_where('ISSUING_CA_KEY_FILE')}: unsupported key type")
    return Issued(cert=cert, key=key)


def _chain(conf: Mapping[str, Any]) -> tuple[x509.Certificate, ...]:
    path = _path(conf, "CA_CHAIN_FILE")
    if path is None:
        return ()
    try:
        with open(path, "rb") as f:
            return tuple(x509.load_pem_x509_certificates(f.read()))
    except (OSError, ValueError) as exc:
        raise ImproperlyConfigured(f"{_where('CA_CHAIN_FILE')}: {path}: {exc}") from exc


def load_settings(raw: Mapping[str, Any] | None) -> EnrollmentSettings:
    """Validate a ``MTLS_ENROLLMENT`` dict (ImproperlyConfigured naming the key on any problem)."""
    if raw is None:
        raise ImproperlyConfigured(f"settings.{SETTING} is missing; it needs at least {' and '.join(REQUIRED)}")
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"settings.{SETTING} must be a dict")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ImproperlyConfigured(f"{SETTING} has unknown keys: {', '.join(unknown)}")
    conf = {**DEFAULTS, **raw}
    ca = _load_ca(conf)
    validity = _positive_number(conf, "CERT_VALIDITY_DAYS", maximum=397)
    crl_seconds = _positive_number(conf, "CRL_NEXT_UPDATE_SECONDS", maximum=30 * 86400)
    if crl_seconds < 60:
        raise ImproperlyConfigured(f"{_where('CRL_NEXT_UPDATE_SECONDS')} must be at least 60 (proxies must fetch it "
                                   "before it goes stale)")
    ttl = _positive_number(conf, "CHALLENGE_TTL_SECONDS", maximum=3600)
    android = _android(conf)
    ios_ids = tuple(_strings(conf["IOS_APP_IDS"], _where("IOS_APP_IDS")))
    for i, app_id in enumerate(ios_ids):
        team, _, bundle = app_id.partition(".")
        if len(team) != 10 or not team.isalnum() or not bundle:
            raise ImproperlyConfigured(f"{_where('IOS_APP_IDS', i)}: {app_id!r} is not TEAMID.bundle.id")
    environment = conf["IOS_ENVIRONMENT"]
    if environment not in ENVIRONMENTS:
        raise ImproperlyConfigured(f"{_where('IOS_ENVIRONMENT')} must be one of {', '.join(ENVIRONMENTS)}")
    if android is None and not ios_ids:
        raise ImproperlyConfigured(f"{SETTING}: configure ANDROID_APPS or IOS_APP_IDS (or both): without an allowed "
                                   "app no evidence can pass")
    status_file = _path(conf, "ANDROID_STATUS_FILE")
    if status_file is not None:
        try:
            load_status_file(status_file)
        except StatusListError as exc:
            raise ImproperlyConfigured(f"{_where('ANDROID_STATUS_FILE')}: {exc}") from exc
    classes: list[type] = []
    for i, dotted in enumerate(_strings(conf["USER_AUTHENTICATION_CLASSES"], _where("USER_AUTHENTICATION_CLASSES"))):
        try:
            classes.append(import_string(dotted))
        except ImportError as exc:
            raise ImproperlyConfigured(f"{_where('USER_AUTHENTICATION_CLASSES', i)}: {exc}") from exc
    if not classes:
        raise ImproperlyConfigured(f"{_where('USER_AUTHENTICATION_CLASSES')} must name at least one class")
    return EnrollmentSettings(
        issuing_ca=ca,
        ca_chain=_chain(conf),
        cert_validity=dt.timedelta(days=validity),
        crl_next_update=dt.timedelta(seconds=crl_seconds),
        challenge_ttl=dt.timedelta(seconds=ttl),
        challenges_per_hour=_positive_int(conf, "CHALLENGES_PER_HOUR", maximum=100_000),
        enrollments_per_day=_positive_int(conf, "ENROLLMENTS_PER_DAY", maximum=100_000),
        android_policy=android,
        android_roots=_roots(conf, "ANDROID_ROOTS_FILE", google_hardware_roots),
        android_software_roots=google_software_roots(),
        android_status_file=status_file,
        ios_app_ids=ios_ids,
        ios_environment=environment,
        ios_roots=_roots(conf, "IOS_ROOTS_FILE", apple_app_attestation_roots),
        user_authentication_classes=tuple(classes),
    )


@lru_cache(maxsize=1)
def get_settings() -> EnrollmentSettings:
    """The current validated settings (cached; reset when tests override ``MTLS_ENROLLMENT``)."""
    return load_settings(getattr(settings, SETTING, None))


def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING:
        get_settings.cache_clear()


setting_changed.connect(_reset)
