"""Android's KeyDescription (extension 1.3.6.1.4.1.11129.2.1.17), read by a tolerant tag walk.

The schema grows with every KeyMint version (attestation versions 1-4, 100, 200, 300, 400, 500):
the AuthorizationList is a SEQUENCE of EXPLICIT context tags, and real chains carry tags a fixed
schema of an older version rejects (405 usageCountLimit, 723 secondImei, 724 moduleHash, ...). So
the walk reads every element's framing, models the tags we use and *ignores* the others, while the
values it models must be strict DER and the tags must ascend (DER's canonical order: an encoder
that breaks it is not the KeyMint reference code, and two readers could see two lists).
Schema: https://source.android.com/docs/security/features/keystore/attestation#schema
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mtls_proxy.attestation import der
from mtls_proxy.attestation import result as R
from mtls_proxy.attestation.result import Refusal

OID = "1.3.6.1.4.1.11129.2.1.17"

SECURITY_LEVELS = {0: "SOFTWARE", 1: "TRUSTED_ENVIRONMENT", 2: "STRONG_BOX"}
BOOT_STATES = {0: "VERIFIED", 1: "SELF_SIGNED", 2: "UNVERIFIED", 3: "FAILED"}
ORIGINS = {0: "GENERATED", 1: "DERIVED", 2: "IMPORTED", 3: "RESERVED", 4: "SECURELY_IMPORTED"}
PURPOSE_SIGN = 2

# AuthorizationList tags (KeyMint Tag numbers without their type bits) that this module models
TAG_PURPOSE = 1
TAG_ALGORITHM = 2
TAG_KEY_SIZE = 3
TAG_DIGEST = 5
TAG_EC_CURVE = 10
TAG_NO_AUTH_REQUIRED = 503
TAG_CREATION_DATE_TIME = 701
TAG_ORIGIN = 702
TAG_ROOT_OF_TRUST = 704
TAG_OS_VERSION = 705
TAG_OS_PATCH_LEVEL = 706
TAG_ATTESTATION_APPLICATION_ID = 709
TAG_ID_BRAND = 710
TAG_ID_DEVICE = 711
TAG_ID_PRODUCT = 712
TAG_ID_MANUFACTURER = 716
TAG_ID_MODEL = 717
TAG_VENDOR_PATCH_LEVEL = 718
TAG_BOOT_PATCH_LEVEL = 719
TAG_MODULE_HASH = 724


def _name(table: dict[int, str], value: int) -> str:
    return table.get(value, f"UNKNOWN({value})")


@dataclass(frozen=True)
class RootOfTrust:
    verified_boot_key: bytes
    device_locked: bool
    verified_boot_state: str
    verified_boot_hash: bytes | None


@dataclass(frozen=True)
class PackageInfo:
    name: str
    version: int


@dataclass(frozen=True)
class AttestationApplicationId:
    packages: tuple[PackageInfo, ...]
    signature_digests: tuple[bytes, ...]
    """SHA-256 digests of the app's signing certificates."""


@dataclass(frozen=True)
class AuthorizationList:
    tags: tuple[int, ...]
    """Every tag present, modelled or not, in encoding order."""
    purposes: frozenset[int] | None = None
    algorithm: int | None = None
    key_size: int | None = None
    digests: frozenset[int] | None = None
    ec_curve: int | None = None
    no_auth_required: bool = False
    creation_date_time: int | None = None
    origin: str | None = None
    root_of_trust: RootOfTrust | None = None
    os_version: int | None = None
    os_patch_level: int | None = None
    attestation_application_id: AttestationApplicationId | None = None
    brand: str | None = None
    device: str | None = None
    product: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    vendor_patch_level: int | None = None
    boot_patch_level: int | None = None
    module_hash: bytes | None = None


@dataclass(frozen=True)
class KeyDescription:
    attestation_version: int
    attestation_security_level: str
    keymint_version: int
    keymint_security_level: str
    attestation_challenge: bytes
    unique_id: bytes
    software_enforced: AuthorizationList
    hardware_enforced: AuthorizationList


def _int_set(tlv: der.Tlv) -> frozenset[int]:
    return frozenset(der.integer(item) for item in der.set_of(tlv))


def _text(tlv: der.Tlv) -> str:
    try:
        return der.octets(tlv).decode("utf-8")
    except UnicodeDecodeError:
        raise der.DerError("not UTF-8") from None


def _root_of_trust(tlv: der.Tlv) -> RootOfTrust:
    items = der.sequence(tlv)
    if len(items) not in (3, 4):
        raise der.DerError(f"RootOfTrust has {len(items)} fields, 3 or 4 expected")
    return RootOfTrust(
        verified_boot_key=der.octets(items[0]),
        device_locked=der.boolean(items[1]),
        verified_boot_state=_name(BOOT_STATES, der.integer(items[2], enumerated=True)),
        verified_boot_hash=der.octets(items[3]) if len(items) == 4 else None,
    )


def _application_id(tlv: der.Tlv) -> AttestationApplicationId:
    items = der.sequence(der.parse(der.octets(tlv)))  # an OCTET STRING wrapping the DER
    if len(items) != 2:
        raise der.DerError(f"AttestationApplicationId has {len(items)} fields, 2 expected")
    packages = []
    for info in der.set_of(items[0]):
        fields = der.sequence(info)
        if len(fields) != 2:
            raise der.DerError("AttestationPackageInfo must have 2 fields")
        packages.append(PackageInfo(_text(fields[0]), der.integer(fields[1])))
    digests = tuple(der.octets(d) for d in der.set_of(items[1]))
    return AttestationApplicationId(tuple(packages), digests)


def _present(tlv: der.Tlv) -> bool:
    """A boolean tag (noAuthRequired ...): present as NULL means true."""
    der.null(tlv)
    return True


_READERS: dict[int, tuple[str, Callable[[der.Tlv], object]]] = {
    TAG_PURPOSE: ("purposes", _int_set),
    TAG_ALGORITHM: ("algorithm", der.integer),
    TAG_KEY_SIZE: ("key_size", der.integer),
    TAG_DIGEST: ("digests", _int_set),
    TAG_EC_CURVE: ("ec_curve", der.integer),
    TAG_NO_AUTH_REQUIRED: ("no_auth_required", _present),
    TAG_CREATION_DATE_TIME: ("creation_date_time", der.integer),
    TAG_ORIGIN: ("origin", lambda t: _name(ORIGINS, der.integer(t))),
    TAG_ROOT_OF_TRUST: ("root_of_trust", _root_of_trust),
    TAG_OS_VERSION: ("os_version", der.integer),
    TAG_OS_PATCH_LEVEL: ("os_patch_level", der.integer),
    TAG_ATTESTATION_APPLICATION_ID: ("attestation_application_id", _application_id),
    TAG_ID_BRAND: ("brand", _text),
    TAG_ID_DEVICE: ("device", _text),
    TAG_ID_PRODUCT: ("product", _text),
    TAG_ID_MANUFACTURER: ("manufacturer", _text),
    TAG_ID_MODEL: ("model", _text),
    TAG_VENDOR_PATCH_LEVEL: ("vendor_patch_level", der.integer),
    TAG_BOOT_PATCH_LEVEL: ("boot_patch_level", der.integer),
    TAG_MODULE_HASH: ("module_hash", der.octets),
}


def _authorization_list(tlv: der.Tlv, which: str) -> AuthorizationList:
    values: dict[str, object] = {}
    tags: list[int] = []
    for item in der.sequence(tlv):
        if item.cls != der.CONTEXT:
            raise der.DerError(f"{which}: element with a non-context tag")
        if tags and item.number <= tags[-1]:
            raise Refusal(R.EXTENSION_TAGS_UNORDERED, f"{which}: tag [{item.number}] after [{tags[-1]}] (DER "
                          "requires ascending tags, each once)")
        tags.append(item.number)
        reader = _READERS.get(item.number)
        inner = der.explicit(item)  # framing checked for every tag, known or not
        if reader is not None:
            field_name, read = reader
            try:
                values[field_name] = read(inner)
            except der.DerError as exc:
                raise der.DerError(f"{which} [{item.number}] {field_name}: {exc}") from None
    return AuthorizationList(tags=tuple(tags), **values)  # type: ignore[arg-type]


def parse_key_description(data: bytes) -> KeyDescription:
    """Parse the extension's value (the DER inside the extnValue OCTET STRING).

    Raises Refusal(extension_malformed or extension_tags_unordered).
    """
    try:
        items = der.sequence(der.parse(data))
        if len(items) != 8:
            raise der.DerError(f"KeyDescription has {len(items)} fields, 8 expected")
        return KeyDescription(
            attestation_version=der.integer(items[0]),
            attestation_security_level=_name(SECURITY_LEVELS, der.integer(items[1], enumerated=True)),
            keymint_version=der.integer(items[2]),
            keymint_security_level=_name(SECURITY_LEVELS, der.integer(items[3], enumerated=True)),
            attestation_challenge=der.octets(items[4]),
            unique_id=der.octets(items[5]),
            software_enforced=_authorization_list(items[6], "softwareEnforced"),
            hardware_enforced=_authorization_list(items[7], "hardwareEnforced"),
        )
    except der.DerError as exc:
        raise Refusal(R.EXTENSION_MALFORMED, f"KeyDescription: {exc}") from None
