"""The real attestation vectors under tests/vectors/attestation (origins and licences: NOTICE)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "attestation"
ANDROID = VECTORS / "android"
IOS = VECTORS / "ios"


def strip_comments(text: str) -> str:
    """android/keyattestation's expected-parse files are JSON with ``//`` line comments."""
    return re.sub(r"(?m)^\s*//.*$", "", text)


@dataclass(frozen=True)
class AndroidVector:
    name: str  # e.g. "tegu/sdk36/TEE_EC_2026_ROOT"
    pem: bytes
    expected: dict[str, Any]

    @property
    def created(self) -> dt.datetime:
        """The key's creationDateTime: a time inside the chain's own validity window."""
        ms = self.expected["softwareEnforced"].get("creationDateTime") or \
            self.expected["hardwareEnforced"]["creationDateTime"]
        return dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC)

    @property
    def challenge(self) -> bytes:
        return base64.b64decode(self.expected["attestationChallenge"])

    @property
    def package(self) -> str:
        return str(self.expected["softwareEnforced"]["attestationApplicationId"]["packages"][0]["name"])

    @property
    def signer_digests(self) -> frozenset[bytes]:
        sigs = self.expected["softwareEnforced"]["attestationApplicationId"]["signatures"]
        return frozenset(base64.b64decode(s) for s in sigs)


def android(name: str) -> AndroidVector:
    pem = (ANDROID / f"{name}.pem").read_bytes()
    expected = json.loads(strip_comments((ANDROID / f"{name}.json").read_text()))
    return AndroidVector(name, pem, expected)


def android_with_expected_parse() -> list[str]:
    return sorted(str(p.relative_to(ANDROID).with_suffix("")) for p in ANDROID.rglob("*.pem")
                  if p.with_suffix(".json").exists())


@dataclass(frozen=True)
class IosVector:
    name: str
    attestation: bytes
    key_id: bytes
    client_data_hash: bytes
    app_id: str
    environment: str
    at: dt.datetime
    public_key_pem: bytes | None = None


def veehaitch_documents(version: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((IOS / f"veehaitch-ios-{version}.yaml").read_text()))


def veehaitch_attestation(version: str) -> IosVector:
    doc = next(d for d in veehaitch_documents(version) if d and d.get("type") == "attestation")
    return IosVector(
        name=f"veehaitch ios-{version}",
        attestation=base64.b64decode(doc["attestationBase64"]),
        key_id=base64.b64decode(doc["keyIdBase64"]),
        client_data_hash=base64.b64decode(doc["clientDataHashSha256Base64"]),
        app_id=f"{doc['teamIdentifier']}.{doc['bundleIdentifier']}",
        environment=doc["environment"],
        at=dt.datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00")),
        public_key_pem=doc["publicKey"].encode(),
    )


VEEHAITCH_VERSIONS = ("14.2", "14.3-beta-2", "14.3-beta-3", "14.3", "14.4-beta-1", "14.4-beta-2", "14.4")

# uebelack/node-app-attest test/verifyAttestation.test.js: team and bundle id; clientDataHash is
# SHA-256 of the base64-decoded "challenge"; the times are the receipts' creation times
NODE_APP_ID = "V8H6LQ9448.io.uebelacker.AppAttestExample"
NODE_TIMES = {"production": dt.datetime(2024, 2, 7, 21, 8, 56, tzinfo=dt.UTC),
              "development": dt.datetime(2024, 2, 4, 20, 27, 6, tzinfo=dt.UTC)}


def node_app_attest(environment: str) -> IosVector:
    doc = json.loads((IOS / f"node-app-attest-attestation-{environment}.json").read_text())
    return IosVector(
        name=f"node-app-attest {environment}",
        attestation=base64.b64decode(doc["attestation"]),
        key_id=base64.b64decode(doc["keyId"]),
        client_data_hash=hashlib.sha256(base64.b64decode(doc["challenge"])).digest(),
        app_id=NODE_APP_ID,
        environment=environment,
        at=NODE_TIMES[environment],
    )
