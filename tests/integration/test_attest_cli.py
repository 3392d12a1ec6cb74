"""``mtls-proxy attest android|ios`` run as a subprocess on real vectors: JSON verdict and exit code."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mtls_proxy.attestation.roots import google_hardware_roots
from tests.support.attestation_vectors import ANDROID, IOS, android, node_app_attest, veehaitch_attestation

CLI = str(Path(sys.executable).with_name("mtls-proxy"))
TEGU = android("tegu/sdk36/TEE_EC_2026_ROOT")
TEGU_AT = "2026-02-24T12:00:00Z"


def attest(*args: str) -> tuple[int, dict[str, Any] | None, str]:
    r = subprocess.run([CLI, "attest", *args], capture_output=True, text=True, timeout=60)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else None, r.stderr


def android_args(vector=TEGU, at: str = TEGU_AT, **extra: str) -> list[str]:
    args = ["android", "--chain", str(ANDROID / f"{vector.name}.pem"),
            "--challenge-b64", base64.b64encode(vector.challenge).decode(), "--package", vector.package,
            "--signer-digest", base64.b64encode(next(iter(vector.signer_digests))).decode(), "--at", at]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


def test_android_accepted_prints_facts_and_exits_0():
    code, out, err = attest(*android_args())
    assert code == 0, err
    assert out is not None and out["platform"] == "android" and out["ok"] is True and out["reasons"] == []
    facts = out["facts"]
    assert (facts["security_level"], facts["boot_state"], facts["device_locked"]) == ("TRUSTED_ENVIRONMENT",
                                                                                    "VERIFIED", True)
    assert facts["os_patch_level"] == 202602 and facts["packages"] == ["com.google.android.attestation"]
    assert out["skipped"] == ["leaf_key"]


def test_android_signer_digest_in_hex():
    args = android_args()
    i = args.index("--signer-digest")
    args[i + 1] = next(iter(TEGU.signer_digests)).hex()
    code, out, _ = attest(*args)
    assert code == 0 and out is not None and out["ok"]


def test_android_unlocked_device_is_refused_with_exit_1():
    vector = android("akita/sdk34/TEE_EC_NONE")
    code, out, _ = attest(*android_args(vector, at=vector.created.isoformat()))
    assert code == 1
    assert out is not None and out["ok"] is False
    assert out["reasons"] == ["device_unlocked", "boot_state_not_verified"]
    assert out["facts"]["boot_state"] == "UNVERIFIED"


def test_android_wrong_challenge():
    args = android_args()
    args[args.index("--challenge-b64") + 1] = base64.b64encode(b"other").decode()
    code, out, _ = attest(*args)
    assert (code, out and out["reasons"]) == (1, ["challenge_mismatch"])


def test_android_csr_of_another_key(tmp_path: Path):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    path = tmp_path / "device.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    code, out, _ = attest(*android_args(csr=str(path)))
    assert (code, out and out["reasons"], out and out["skipped"]) == (1, ["key_mismatch"], [])


def test_android_status_list_file(tmp_path: Path):
    serial = format(x509.load_pem_x509_certificates(TEGU.pem)[2].serial_number, "x")
    path = tmp_path / "status.json"
    path.write_text(json.dumps({"entries": {serial: {"status": "REVOKED", "reason": "KEY_COMPROMISE"}}}))
    code, out, _ = attest(*android_args(status_list=str(path)))
    assert (code, out and out["reasons"]) == (1, ["serial_revoked"])


def test_android_roots_file(tmp_path: Path):
    rsa_only = [c for c in google_hardware_roots() if "Key Attestation CA1" not in c.subject.rfc4514_string()]
    path = tmp_path / "roots.json"
    path.write_text(json.dumps([c.public_bytes(serialization.Encoding.PEM).decode() for c in rsa_only]))
    code, out, _ = attest(*android_args(roots=str(path)))
    assert (code, out and out["reasons"]) == (1, ["root_untrusted"])


def test_android_min_os_patch_level():
    code, out, _ = attest(*android_args(min_os_patch_level="202603"))
    assert (code, out and out["reasons"]) == (1, ["os_patch_level_too_old"])


def test_android_unusable_inputs_exit_2_without_json(tmp_path: Path):
    code, out, err = attest(*android_args(at="2026-02-24T12:00:00"))
    assert (code, out, err.strip()) == (2, None, "mtls-proxy attest: error: --at: give a time zone "
                                                 "(e.g. 2026-02-24T12:00:00Z)")
    args = android_args()
    args[args.index("--chain") + 1] = str(tmp_path / "missing.pem")
    code, out, err = attest(*args)
    assert (code, out) == (2, None)
    assert err.startswith(f"mtls-proxy attest: error: --chain {tmp_path / 'missing.pem'}: cannot read")
    bad = tmp_path / "status.json"
    bad.write_text('{"entries": {"ab": {"status": "OK"}}}')
    code, out, err = attest(*android_args(status_list=str(bad)))
    assert (code, out, err.strip()) == (2, None, f"mtls-proxy attest: error: {bad}: entries.ab.status: expected one "
                                                 "of REVOKED, SUSPENDED")
    code, out, err = attest(*android_args(signer_digest="abcd"))
    assert (code, out) == (2, None) and "--signer-digest: 3 bytes, a SHA-256 digest has 32" in err


def test_a_chain_file_that_is_not_pem_is_a_refusal(tmp_path: Path):
    path = tmp_path / "junk.pem"
    path.write_text("not a certificate")
    args = android_args()
    args[args.index("--chain") + 1] = str(path)
    code, out, _ = attest(*args)
    assert (code, out and out["reasons"]) == (1, ["chain_unparsable"])


def ios_args(vector, attestation_file: Path, **extra: str) -> list[str]:
    args = ["ios", "--attestation", str(attestation_file), "--key-id", base64.b64encode(vector.key_id).decode(),
            "--client-data-hash", base64.b64encode(vector.client_data_hash).decode(), "--app-id", vector.app_id,
            "--environment", vector.environment, "--at", vector.at.isoformat()]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


def test_ios_production_base64_file(tmp_path: Path):
    vector = node_app_attest("production")
    path = tmp_path / "attestation.b64"
    path.write_text(json.loads((IOS / "node-app-attest-attestation-production.json").read_text())["attestation"])
    code, out, err = attest(*ios_args(vector, path))
    assert code == 0, err
    assert out is not None and out["ok"] is True and out["platform"] == "ios"
    assert (out["facts"]["app_id"], out["facts"]["environment"], out["facts"]["counter"]) == (
        "V8H6LQ9448.io.uebelacker.AppAttestExample", "production", 0)


def test_ios_development_raw_cbor_file(tmp_path: Path):
    vector = veehaitch_attestation("14.4")
    path = tmp_path / "attestation.cbor"
    path.write_bytes(vector.attestation)
    code, out, err = attest(*ios_args(vector, path))
    assert code == 0, err
    assert out is not None and out["facts"]["environment"] == "development"


def test_ios_refusals_exit_1(tmp_path: Path):
    vector = veehaitch_attestation("14.4")
    path = tmp_path / "attestation.cbor"
    path.write_bytes(vector.attestation)
    args = ios_args(vector, path)
    args[args.index("--app-id") + 1] = "6MURL8TA57.com.example.other"
    code, out, _ = attest(*args)
    assert (code, out and out["reasons"]) == (1, ["rp_id_mismatch"])
    args = ios_args(vector, path)
    args[args.index("--environment") + 1] = "production"
    code, out, _ = attest(*args)
    assert (code, out and out["reasons"]) == (1, ["aaguid_mismatch"])


def test_ios_usage_errors_exit_2(tmp_path: Path):
    vector = veehaitch_attestation("14.4")
    path = tmp_path / "attestation.txt"
    path.write_text("%%% not base64 %%%")
    code, out, err = attest(*ios_args(vector, path))
    assert (code, out) == (2, None) and "neither a CBOR map nor base64" in err
    args = ios_args(vector, path)
    args[args.index("--environment") + 1] = "staging"
    code, out, err = attest(*args)
    assert (code, out) == (2, None) and "invalid choice: 'staging'" in err
    code, _, err = attest()
    assert code == 2 and "PLATFORM" in err
