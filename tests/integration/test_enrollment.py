"""Device enrollment end to end over real HTTP: gunicorn (3 workers) on PostgreSQL and on SQLite.

The site is tests/enrollment_site (users, Basic auth, the admin, the replay store); the issuing
CA comes from ``PkiStore.init(issuing_ca=True)``; Android chains and App Attest objects are made
here under test roots handed to the verifier through ``MTLS_ENROLLMENT`` (ANDROID_ROOTS_FILE,
IOS_ROOTS_FILE). Renewal carries the identity headers the proxy would send, signed by the real
IdentityEncoder for the certificate the service issued. Every refusal asserts status and reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mtls_proxy.attestation.ios import client_data_hash
from mtls_proxy.certs import parse_peer
from mtls_proxy.identity import IdentityEncoder, IdentityOptions, generate_signing_key
from mtls_proxy.pki import PkiStore
from mtls_proxy.pki.x509 import issue_ca, issue_client
from tests.support.attestation_pki import (
    APP_ID,
    PACKAGE,
    SIGNER_DIGEST,
    AndroidTestRoot,
    AppAttestTestRoot,
    KeyDescriptionSpec,
    application_id,
    assertion,
    key_id_of,
    pem,
)
from tests.support.enrollment_site import EnrollmentSite, Response, start_enrollment_site
from tests.support.postgres import PostgresServer, start_postgres

pytestmark = pytest.mark.timeout(300)

EST = "/.well-known/est"
CHALLENGE_TTL = 8
CHALLENGES_PER_HOUR = 6
ENROLLMENTS_PER_DAY = 6
USERS = [(f"user{i:02d}", f"pw-{i:02d}-secret") for i in range(40)]
ADMIN = ("admin", "admin-secret-pw")


@dataclass
class World:
    site: EnrollmentSite
    pki: PkiStore
    android: AndroidTestRoot
    revoked_android: AndroidTestRoot  # its intermediate's serial is REVOKED in the status file
    ios: AppAttestTestRoot
    encoder: IdentityEncoder
    users: Iterator[tuple[str, str]]
    status_file: Path

    def user(self) -> tuple[str, str]:
        return next(self.users)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.close()


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def w(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "postgresql":
        database = request.getfixturevalue("postgres").django_database()
    else:  # IMMEDIATE: each transaction takes the write lock first, so the rate-limit count cannot race
        database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp / "db.sqlite3"),
                    "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 30}}
    store = PkiStore(tmp / "pki")
    store.init(issuing_ca=True)
    now = dt.datetime.now(dt.UTC)
    android, revoked_android, ios = AndroidTestRoot(now=now), AndroidTestRoot("Other Root", now=now), \
        AppAttestTestRoot(now=now)
    (tmp / "android-roots.pem").write_bytes(pem([android.root, revoked_android.root]))
    (tmp / "ios-roots.pem").write_bytes(pem([ios.root]))
    (tmp / "status.json").write_text(json.dumps({"entries": {
        format(revoked_android.intermediate.serial_number, "x"): {"status": "REVOKED", "reason": "KEY_COMPROMISE"}}}))
    key = tmp / "identity.key"
    signing_key = generate_signing_key()
    key.write_text(signing_key + "\n")
    os.chmod(key, 0o600)
    enrollment = {
        "ISSUING_CA_CERT_FILE": str(store.issuing_ca_cert_path), "ISSUING_CA_KEY_FILE": str(store.issuing_ca_key_path),
        "CA_CHAIN_FILE": str(store.ca_cert_path),
        "CHALLENGE_TTL_SECONDS": CHALLENGE_TTL, "CHALLENGES_PER_HOUR": CHALLENGES_PER_HOUR,
        "ENROLLMENTS_PER_DAY": ENROLLMENTS_PER_DAY, "CRL_NEXT_UPDATE_SECONDS": 600,
        "ANDROID_APPS": [{"package": PACKAGE, "signer_digests": [SIGNER_DIGEST.hex()]}],
        "ANDROID_ROOTS_FILE": str(tmp / "android-roots.pem"), "ANDROID_STATUS_FILE": str(tmp / "status.json"),
        "IOS_APP_IDS": [APP_ID], "IOS_ENVIRONMENT": "production", "IOS_ROOTS_FILE": str(tmp / "ios-roots.pem"),
        "USER_AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication",
                                        "rest_framework.authentication.SessionAuthentication",
                                        "rest_framework.authentication.BasicAuthentication"],
    }
    site = start_enrollment_site(tmp, database=database, enrollment=enrollment, signing_key_file=key, users=USERS,
                                 superuser=ADMIN)
    yield World(site, store, android, revoked_android, ios, IdentityEncoder(IdentityOptions(
        signing_key=signing_key.encode())), iter(USERS), tmp / "status.json")
    site.stop()


# -- helpers ---------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def csr_der(key: Any, *, algorithm: hashes.HashAlgorithm | None = None) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whatever the app asks")])).sign(key, algorithm or
                                                                                           hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def challenge(w: World, user: tuple[str, str]) -> bytes:
    r = w.site.request("POST", f"{EST}/challenge", b"", user=user)
    assert r.status == 201, r.body
    body = r.json()
    assert dt.datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC) > \
        dt.datetime.now(dt.UTC)
    raw = base64.b64decode(body["challenge"])
    assert len(raw) == 32
    return raw


def android_body(w: World, nonce: bytes, key: ec.EllipticCurvePrivateKey, *, spec: KeyDescriptionSpec | None = None,
                 attested_key: Any = None, root: AndroidTestRoot | None = None, csr: bytes | None = None) -> bytes:
    spec = spec or KeyDescriptionSpec(challenge=nonce)
    chain = (root or w.android).chain((attested_key or key).public_key(), spec)
    return json.dumps({"platform": "android", "challenge": b64(nonce), "csr": b64(csr or csr_der(key)),
                       "attestation_chain": [b64(c.public_bytes(serialization.Encoding.DER)) for c in chain]}).encode()


JSON = [("Content-Type", "application/json")]
WANT_JSON = [*JSON, ("Accept", "application/json")]


def enroll(w: World, user: tuple[str, str], body: bytes, headers: Any = JSON) -> Response:
    return w.site.request("POST", f"{EST}/simpleenroll", body, headers, user=user)


def refused(r: Response, status: int, reason: str) -> dict[str, Any]:
    assert r.status == status, (r.status, r.body)
    body: dict[str, Any] = r.json()
    assert body["reason"] == reason, body
    assert isinstance(body["error"], str) and body["error"]
    return body


def pkcs7_certs(r: Response) -> list[x509.Certificate]:
    assert r.status == 201, r.body
    assert r.headers["content-type"] == "application/pkcs7-mime; smime-type=certs-only"
    assert r.headers["content-transfer-encoding"] == "base64"
    certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(r.body))
    # a PKCS#7 certificate set has no order: the leaf is the one certificate that is not a CA
    leaves = [c for c in certs if not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca]
    assert len(leaves) == 1 and len(certs) == 3
    return [leaves[0], *(c for c in certs if c is not leaves[0])]


def device_id(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def enrolled_android(w: World, user: tuple[str, str]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    certs = pkcs7_certs(enroll(w, user, android_body(w, challenge(w, user), key)))
    return certs[0], key


def mtls(w: World, cert: x509.Certificate, method: str, path: str, body: bytes) -> Response:
    """The request as the proxy forwards it for a client that presented ``cert``."""
    peer = parse_peer(cert.public_bytes(serialization.Encoding.DER))
    signed = w.encoder.request_headers(w.encoder.connection_headers(peer), method=method.encode(),
                                       target=path.encode(), host=f"127.0.0.1:{w.site.port}".encode(),
                                       content_length=len(body), chunked=False)
    headers = [(n.decode(), v.decode()) for n, v in signed]
    return w.site.request(method, path, body, [*JSON, *headers])


def renewal_challenge(w: World, cert: x509.Certificate) -> bytes:
    r = mtls(w, cert, "POST", f"{EST}/reenroll-challenge", b"")
    assert r.status == 201, r.body
    return base64.b64decode(r.json()["challenge"])


def crl(w: World, headers: Any = ()) -> tuple[Response, x509.CertificateRevocationList | None]:
    r = w.site.request("GET", f"{EST}/crl", None, headers)
    return r, (x509.load_pem_x509_crl(r.body) if r.status == 200 else None)


# -- enrollment ------------------------------------------------------------------------------------


def test_android_enrollment_issues_a_short_lived_device_certificate_from_the_intermediate(w: World) -> None:
    user = w.user()
    cert, key = enrolled_android(w, user)
    issuing = w.pki.issuing_ca().cert
    cert.verify_directly_issued_by(issuing)
    assert cert.public_key() == key.public_key()
    dev = device_id(cert)
    assert re.fullmatch(r"[0-9a-f-]{36}", dev)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "mtls-proxy"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:mtls-proxy:device:{dev}"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=7) <= lifetime <= dt.timedelta(days=7, minutes=6)
    listing = w.site.manage("mtls_enroll", "list", "--user", user[0], "--json")
    assert listing.returncode == 0, listing.stderr
    [row] = json.loads(listing.stdout)
    assert row == {"device": dev, "user": user[0], "platform": "android", "status": "active",
                   "serial": format(cert.serial_number, "x"),
                   "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert re.search(rf"INFO mtls_proxy.enrollment enroll issued: user=\d+ device={dev} platform=android "
                     rf"serial={cert.serial_number:x} .*'security_level': 'TRUSTED_ENVIRONMENT'", w.site.stderr_text())


def test_ios_enrollment_with_app_attest_binds_the_csr_and_answers_json(w: World) -> None:
    user = w.user()
    nonce = challenge(w, user)
    tls_key, app_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP256R1())
    csr = csr_der(tls_key)
    obj = w.ios.attestation(app_key.public_key(), client_data_hash(nonce, csr))
    body = {"platform": "ios", "challenge": b64(nonce), "csr": b64(csr), "attestation": b64(obj),
            "key_id": b64(key_id_of(app_key.public_key()))}
    r = enroll(w, user, json.dumps(body).encode(), WANT_JSON)
    assert r.status == 201, r.body
    answer = r.json()
    cert = x509.load_der_x509_certificate(base64.b64decode(answer["certificate"]))
    assert cert.public_key() == tls_key.public_key() and device_id(cert) == answer["device_id"]
    assert [x509.load_der_x509_certificate(base64.b64decode(c)) for c in answer["chain"]] == [
        w.pki.issuing_ca().cert, w.pki.client_ca_cert()]


def test_ios_evidence_for_another_csr_and_wrong_app_are_refused(w: World) -> None:
    user = w.user()
    app_key, tls_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def attempt(**make: Any) -> Response:
        nonce = challenge(w, user)
        csr = csr_der(tls_key)
        bound = make.pop("bound_csr", csr)
        obj = w.ios.attestation(app_key.public_key(), client_data_hash(nonce, bound), **make)
        return enroll(w, user, json.dumps({"platform": "ios", "challenge": b64(nonce), "csr": b64(csr),
                                           "attestation": b64(obj),
                                           "key_id": b64(key_id_of(app_key.public_key()))}).encode())

    refused(attempt(bound_csr=csr_der(ec.generate_private_key(ec.SECP256R1()))), 403, "nonce_mismatch")
    body = refused(attempt(app_id="ZZZZZ99999.com.other.app"), 403, "rp_id_mismatch")
    assert body.get("reasons", ["rp_id_mismatch"])[0] == "rp_id_mismatch"


def test_cacerts_is_a_certs_only_pkcs7_of_the_issuing_ca_and_its_root(w: World) -> None:
    r = w.site.request("GET", f"{EST}/cacerts")
    assert r.status == 200
    assert sorted(pkcs7_certs_200(r), key=lambda c: c.subject.rfc4514_string()) == sorted(
        [w.pki.issuing_ca().cert, w.pki.client_ca_cert()], key=lambda c: c.subject.rfc4514_string())


def pkcs7_certs_200(r: Response) -> list[x509.Certificate]:
    assert r.headers["content-type"] == "application/pkcs7-mime; smime-type=certs-only"
    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(r.body))


# -- refusals of enrollment -------------------------------------------------------------------------


def test_challenge_needs_a_signed_in_user(w: World) -> None:
    refused(w.site.request("POST", f"{EST}/challenge", b""), 401, "authentication_required")
    refused(w.site.request("POST", f"{EST}/challenge", b"", user=(USERS[0][0], "wrong")), 401,
            "authentication_required")
    key = ec.generate_private_key(ec.SECP256R1())
    r = w.site.request("POST", f"{EST}/simpleenroll", android_body(w, os.urandom(32), key), JSON)
    refused(r, 401, "authentication_required")
    assert re.search(r"WARNING mtls_proxy.enrollment POST /.well-known/est/simpleenroll refused: serial=None "
                     r"reason=authentication_required status=401 detail=", w.site.stderr_text())


def test_a_session_sign_in_needs_the_csrf_token(w: World) -> None:
    session = AdminSession(w.site)
    session.login(*ADMIN)
    r = w.site.request("POST", f"{EST}/challenge", b"", session._headers())
    body = refused(r, 403, "forbidden")
    assert "CSRF" in body["error"]
    r = w.site.request("POST", f"{EST}/challenge", b"", session._headers([
        ("X-CSRFToken", session.cookies["csrftoken"]), ("Origin", f"http://127.0.0.1:{w.site.port}")]))
    assert r.status == 201, r.body


def test_bodies_that_are_not_a_json_object(w: World) -> None:
    user = w.user()
    refused(enroll(w, user, b"[]"), 400, "bad_request")
    refused(enroll(w, user, b"{not json"), 400, "bad_request")
    refused(enroll(w, user, b'{"platform": "windows"}'), 400, "bad_request")
    body = refused(enroll(w, user, json.dumps({"platform": "android", "challenge": "%%%", "csr": "AA=="}).encode()),
                   400, "bad_request")
    assert body["error"] == "'challenge' is not base64"


def test_a_drf_token_signs_the_user_in_and_the_client_certificate_never_does(w: World) -> None:
    user = w.user()
    made = w.site.manage("shell", "--no-imports", "-c",
                         "from rest_framework.authtoken.models import Token\n"
                         "from django.contrib.auth import get_user_model\n"
                         f"print(Token.objects.create(user=get_user_model().objects.get(username={user[0]!r})).key)")
    assert made.returncode == 0, made.stderr
    token = [("Authorization", f"Token {made.stdout.strip()}")]
    r = w.site.request("POST", f"{EST}/challenge", b"", token)
    assert r.status == 201, r.body
    refused(w.site.request("POST", f"{EST}/challenge", b"", [("Authorization", "Token " + "0" * 40)]), 401,
            "authentication_required")
    # a device certificate is not a user sign-in: the challenge view ignores it
    cert, _ = enrolled_android(w, w.user())
    refused(mtls(w, cert, "POST", f"{EST}/challenge", b""), 401, "authentication_required")


def test_reused_expired_and_foreign_challenges_are_refused(w: World) -> None:
    user, other = w.user(), w.user()
    key = ec.generate_private_key(ec.SECP256R1())
    nonce = challenge(w, user)
    assert enroll(w, user, android_body(w, nonce, key)).status == 201
    refused(enroll(w, user, android_body(w, nonce, key)), 403, "challenge_used")
    refused(enroll(w, user, android_body(w, os.urandom(32), key)), 403, "challenge_unknown")
    refused(enroll(w, other, android_body(w, challenge(w, user), key)), 403, "challenge_unknown")
    late = challenge(w, user)
    time.sleep(CHALLENGE_TTL + 1)
    body = refused(enroll(w, user, android_body(w, late, key)), 403, "challenge_expired")
    assert body["error"].startswith("the challenge expired at ")


def test_csr_with_a_bad_signature_or_weak_key_is_refused(w: World) -> None:
    user = w.user()
    key = ec.generate_private_key(ec.SECP256R1())
    good = bytearray(csr_der(key))
    good[-1] ^= 0x01  # last byte of the ECDSA signature's s
    r = enroll(w, user, android_body(w, challenge(w, user), key, csr=bytes(good)))
    refused(r, 400, "csr_signature_invalid")
    refused(enroll(w, user, android_body(w, os.urandom(32), key, csr=b"\x30\x03\x02\x01\x00")), 400, "csr_malformed")
    weak_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    body = refused(enroll(w, user, android_body(w, os.urandom(32), key, csr=csr_der(weak_rsa))), 400, "weak_key")
    assert body["error"] == "RSA key of 1024 bits: at least 2048 required"
    p521 = ec.generate_private_key(ec.SECP521R1())
    body = refused(enroll(w, user, android_body(w, os.urandom(32), key, csr=csr_der(p521))), 400, "weak_key")
    assert body["error"] == "EC curve secp521r1: only P-256 and P-384 are accepted"


def test_android_evidence_refusals(w: World) -> None:
    user = w.user()
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    refused(enroll(w, user, android_body(w, challenge(w, user), key, attested_key=other)), 403, "key_mismatch")
    nonce = challenge(w, user)
    r = enroll(w, user, android_body(w, nonce, key, spec=KeyDescriptionSpec(challenge=b"another nonce")))
    refused(r, 403, "challenge_mismatch")
    nonce = challenge(w, user)
    spec = KeyDescriptionSpec(challenge=nonce)
    spec.sw[709] = application_id(packages=(("com.evil.app", 1),))
    refused(enroll(w, user, android_body(w, nonce, key, spec=spec)), 403, "package_not_allowed")
    nonce = challenge(w, user)
    spec = KeyDescriptionSpec(challenge=nonce)
    spec.sw[709] = application_id(digests=(hashlib.sha256(b"a re-signed build").digest(),))
    refused(enroll(w, user, android_body(w, nonce, key, spec=spec)), 403, "signer_digest_not_allowed")
    log = w.site.stderr_text()
    assert re.search(r"WARNING mtls_proxy.enrollment enroll refused: user=\d+ device=None reason=key_mismatch "
                     r"reasons=key_mismatch status=403 detail=the attested key is not the CSR's key", log)


def test_revoked_attestation_serial_and_missing_evidence_are_refused(w: World) -> None:
    user = w.user()
    key = ec.generate_private_key(ec.SECP256R1())
    r = enroll(w, user, android_body(w, challenge(w, user), key, root=w.revoked_android))
    refused(r, 403, "serial_revoked")
    body = json.loads(android_body(w, challenge(w, user), key))
    del body["attestation_chain"]
    refused(enroll(w, user, json.dumps(body).encode()), 400, "evidence_missing")
    good = w.status_file.read_bytes()
    w.status_file.write_text("{broken")  # re-read at each enrollment: an unusable list fails closed
    try:
        body = refused(enroll(w, user, android_body(w, challenge(w, user), key)), 503, "status_list_unavailable")
        assert body["error"].startswith(f"attestation status list: {w.status_file}: not JSON")
    finally:
        w.status_file.write_bytes(good)


def test_enrollment_rate_limit_is_per_user_and_atomic_across_workers(w: World) -> None:
    user, bystander = w.user(), w.user()
    key = ec.generate_private_key(ec.SECP256R1())
    body = android_body(w, os.urandom(32), key, csr=b"not a csr")
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: enroll(w, user, body), range(ENROLLMENTS_PER_DAY + 6)))
    reasons = sorted(r.json()["reason"] for r in results)
    assert reasons == ["csr_malformed"] * ENROLLMENTS_PER_DAY + ["rate_limited"] * 6
    limited = next(r for r in results if r.status == 429)
    assert 0 < int(limited.headers["retry-after"]) <= 86400 + 1
    # another user is not affected
    refused(enroll(w, bystander, body), 400, "csr_malformed")


def test_challenge_rate_limit_is_atomic_across_workers(w: World) -> None:
    user = w.user()
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: w.site.request("POST", f"{EST}/challenge", b"", user=user), range(12)))
    assert sorted(r.status for r in results) == [201] * CHALLENGES_PER_HOUR + [429] * (12 - CHALLENGES_PER_HOUR)
    assert {r.json()["reason"] for r in results if r.status == 429} == {"rate_limited"}
    assert len(set(w.site.worker_pids)) == 3


def test_one_challenge_used_by_many_requests_at_once_issues_one_certificate(w: World) -> None:
    user = w.user()
    key = ec.generate_private_key(ec.SECP256R1())
    body = android_body(w, challenge(w, user), key)
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda _: enroll(w, user, body), range(5)))
    assert sorted(r.status for r in results) == [201, 403, 403, 403, 403]
    assert {r.json()["reason"] for r in results if r.status == 403} == {"challenge_used"}


# -- renewal over mTLS ---------------------------------------------------------------------------------


def test_android_renewal_same_key_then_rekey_with_fresh_evidence(w: World) -> None:
    user = w.user()
    cert, key = enrolled_android(w, user)
    same = json.dumps({"challenge": b64(renewal_challenge(w, cert)), "csr": b64(csr_der(key))}).encode()
    [renewed, *_] = pkcs7_certs(mtls(w, cert, "POST", f"{EST}/simplereenroll", same))
    assert device_id(renewed) == device_id(cert) and renewed.serial_number != cert.serial_number
    new_key = ec.generate_private_key(ec.SECP256R1())
    bare = json.dumps({"challenge": b64(renewal_challenge(w, renewed)), "csr": b64(csr_der(new_key))}).encode()
    refused(mtls(w, renewed, "POST", f"{EST}/simplereenroll", bare), 400, "evidence_missing")
    nonce = renewal_challenge(w, renewed)
    rekey = json.loads(android_body(w, nonce, new_key))
    del rekey["platform"]
    [rekeyed, *_] = pkcs7_certs(mtls(w, renewed, "POST", f"{EST}/simplereenroll", json.dumps(rekey).encode()))
    assert rekeyed.public_key() == new_key.public_key() and device_id(rekeyed) == device_id(cert)
    # an enrollment challenge (no device) does not renew, nor does a renewal challenge of another device
    other_cert, _ = enrolled_android(w, user)
    foreign = json.dumps({"challenge": b64(renewal_challenge(w, other_cert)), "csr": b64(csr_der(new_key))})
    refused(mtls(w, rekeyed, "POST", f"{EST}/simplereenroll", foreign.encode()), 403, "challenge_unknown")


def test_ios_renewal_needs_an_assertion_with_a_growing_counter(w: World) -> None:
    user = w.user()
    nonce = challenge(w, user)
    tls_key, app_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    csr = csr_der(tls_key)
    obj = w.ios.attestation(app_key.public_key(), client_data_hash(nonce, csr))
    [cert, *_] = pkcs7_certs(enroll(w, user, json.dumps({
        "platform": "ios", "challenge": b64(nonce), "csr": b64(csr), "attestation": b64(obj),
        "key_id": b64(key_id_of(app_key.public_key()))}).encode()))

    def renew(counter: int, signer: ec.EllipticCurvePrivateKey = app_key) -> Response:
        nonce = renewal_challenge(w, cert)
        new_csr = csr_der(ec.generate_private_key(ec.SECP256R1()))
        proof = assertion(signer, client_data_hash(nonce, new_csr), counter=counter)
        body = json.dumps({"challenge": b64(nonce), "csr": b64(new_csr), "assertion": b64(proof)}).encode()
        return mtls(w, cert, "POST", f"{EST}/simplereenroll", body)

    assert renew(1).status == 201
    refused(renew(1), 403, "counter_not_increasing")
    refused(renew(5, ec.generate_private_key(ec.SECP256R1())), 403, "assertion_signature_invalid")
    assert renew(2).status == 201


def test_ios_renewals_racing_with_the_same_counter_have_one_winner(w: World) -> None:
    user = w.user()
    nonce = challenge(w, user)
    app_key = ec.generate_private_key(ec.SECP256R1())
    csr = csr_der(ec.generate_private_key(ec.SECP256R1()))
    obj = w.ios.attestation(app_key.public_key(), client_data_hash(nonce, csr))
    [cert, *_] = pkcs7_certs(enroll(w, user, json.dumps({
        "platform": "ios", "challenge": b64(nonce), "csr": b64(csr), "attestation": b64(obj),
        "key_id": b64(key_id_of(app_key.public_key()))}).encode()))
    bodies = []
    for _ in range(4):
        nonce = renewal_challenge(w, cert)
        new_csr = csr_der(ec.generate_private_key(ec.SECP256R1()))
        proof = assertion(app_key, client_data_hash(nonce, new_csr), counter=1)
        bodies.append(json.dumps({"challenge": b64(nonce), "csr": b64(new_csr), "assertion": b64(proof)}).encode())
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda b: mtls(w, cert, "POST", f"{EST}/simplereenroll", b), bodies))
    assert sorted(r.status for r in results) == [201, 403, 403, 403]
    assert {r.json()["reason"] for r in results if r.status == 403} == {"counter_not_increasing"}


def test_the_certificate_signs_in_the_user_who_enrolled_it_until_revoked(w: World) -> None:
    user = w.user()
    cert, _ = enrolled_android(w, user)
    r = mtls(w, cert, "GET", "/api/whoami", b"")
    assert r.status == 200, r.body
    assert r.json() == {"user": user[0], "device": device_id(cert), "serial": format(cert.serial_number, "x"),
                        "san_uri": [f"urn:mtls-proxy:device:{device_id(cert)}"]}
    stranger = issue_client("not-ours", issue_ca("Some Other CA")).cert
    assert mtls(w, stranger, "GET", "/api/whoami", b"").status == 401
    assert w.site.manage("mtls_enroll", "revoke", "--device", device_id(cert)).returncode == 0
    r = mtls(w, cert, "GET", "/api/whoami", b"")  # Django refuses at once, before any proxy fetches the CRL
    assert (r.status, r.json()) == (401, {"detail": "client certificate is not mapped to a user"})


def test_renewals_racing_a_revocation_leave_no_certificate_of_the_device_off_the_crl(w: World) -> None:
    user = w.user()
    cert, key = enrolled_android(w, user)
    bodies = [json.dumps({"challenge": b64(renewal_challenge(w, cert)), "csr": b64(csr_der(key))}).encode()
              for _ in range(4)]
    session = AdminSession(w.site)
    session.login(*ADMIN)

    def revoke() -> Response:
        return session.post("/admin/mtls_enrollment/device/", {"action": "revoke", "_selected_action": device_id(cert)},
                            referer="/admin/mtls_enrollment/device/")

    with ThreadPoolExecutor(5) as pool:
        renewals = [pool.submit(mtls, w, cert, "POST", f"{EST}/simplereenroll", b) for b in bodies]
        revoked = pool.submit(revoke)
        results = [f.result() for f in renewals]
    assert revoked.result().status == 302
    issued = [pkcs7_certs(r)[0] for r in results if r.status == 201]
    assert all(r.status == 201 or r.json()["reason"] == "device_revoked" for r in results), [r.body for r in results]
    _, current = crl(w)
    assert current is not None
    for c in [cert, *issued]:  # whatever won the race: every certificate of the device is revoked
        assert current.get_revoked_certificate_by_serial_number(c.serial_number) is not None


def test_renewal_of_unknown_revoked_and_uncertified_callers(w: World) -> None:
    user = w.user()
    refused(w.site.request("POST", f"{EST}/reenroll-challenge", b"", JSON), 401, "certificate_required")
    refused(w.site.request("POST", f"{EST}/simplereenroll", b"{}", JSON), 401, "certificate_required")
    stranger = issue_client("not-ours", issue_ca("Some Other CA")).cert
    refused(mtls(w, stranger, "POST", f"{EST}/reenroll-challenge", b""), 403, "device_unknown")
    refused(mtls(w, stranger, "POST", f"{EST}/simplereenroll", b"{}"), 403, "device_unknown")
    cert, key = enrolled_android(w, user)
    nonce = renewal_challenge(w, cert)
    done = w.site.manage("mtls_enroll", "revoke", "--device", device_id(cert), "--reason", "keyCompromise")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"revoked device {device_id(cert)} (1 certificate(s)); the CRL was regenerated"
    body = json.dumps({"challenge": b64(nonce), "csr": b64(csr_der(key))}).encode()
    refused(mtls(w, cert, "POST", f"{EST}/simplereenroll", body), 403, "device_revoked")
    refused(mtls(w, cert, "POST", f"{EST}/reenroll-challenge", b""), 403, "device_revoked")
    again = w.site.manage("mtls_enroll", "revoke", "--device", device_id(cert))
    assert again.returncode == 1 and f"device {device_id(cert)} is already revoked" in again.stderr
    unknown = w.site.manage("mtls_enroll", "revoke", "--device", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 1 and "no device '00000000-0000-0000-0000-000000000000'" in unknown.stderr


def test_a_certificate_revoked_in_the_admin_is_refused_even_when_its_device_is_active(w: World) -> None:
    user = w.user()
    cert, _ = enrolled_android(w, user)
    session = AdminSession(w.site)
    session.login(*ADMIN)
    page = session.get(f"/admin/mtls_enrollment/issuedcertificate/?q={cert.serial_number:x}&revoked_at__isempty=1")
    [pk] = re.findall(rb"/admin/mtls_enrollment/issuedcertificate/(\d+)/change/", page.body)
    r = session.post("/admin/mtls_enrollment/issuedcertificate/", {"action": "revoke", "_selected_action": pk.decode()},
                     referer="/admin/mtls_enrollment/issuedcertificate/")
    assert r.status == 302, r.body[:500]
    refused(mtls(w, cert, "POST", f"{EST}/reenroll-challenge", b""), 403, "certificate_revoked")
    _, current = crl(w)
    assert current is not None
    entry = current.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert not list(entry.extensions)  # unspecified: no reason extension (RFC 5280)
    listing = json.loads(w.site.manage("mtls_enroll", "list", "--user", user[0], "--json").stdout)
    assert [row["status"] for row in listing] == ["active"]


# -- the CRL and the admin ----------------------------------------------------------------------------


def test_crl_is_signed_by_the_issuing_ca_short_lived_and_conditional(w: World) -> None:
    r, current = crl(w)
    assert r.status == 200 and r.headers["content-type"] == "application/x-pem-file"
    assert current is not None
    assert current.is_signature_valid(w.pki.issuing_ca().cert.public_key())  # type: ignore[arg-type]
    assert current.issuer == w.pki.issuing_ca().cert.subject
    assert current.next_update_utc is not None
    assert dt.timedelta(minutes=5) < current.next_update_utc - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=10)
    etag = r.headers["etag"]
    same, _ = crl(w, [("If-None-Match", etag)])
    assert (same.status, same.body, same.headers["etag"]) == (304, b"", etag)
    again, _ = crl(w)
    assert again.headers["etag"] == etag and again.body == r.body  # every worker serves the stored CRL


def test_admin_revoke_action_puts_the_device_on_the_crl_at_once(w: World) -> None:
    user = w.user()
    cert, _ = enrolled_android(w, user)
    before, old = crl(w)
    assert old is not None and old.get_revoked_certificate_by_serial_number(cert.serial_number) is None
    session = AdminSession(w.site)
    session.login(*ADMIN)
    listing = session.get("/admin/mtls_enrollment/device/?platform__exact=android&status__exact=active")
    assert listing.status == 200 and device_id(cert).encode() in listing.body
    r = session.post("/admin/mtls_enrollment/device/", {"action": "revoke", "_selected_action": device_id(cert)},
                     referer="/admin/mtls_enrollment/device/")
    assert r.status == 302, r.body[:500]
    after, new = crl(w)
    assert new is not None and new.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert after.headers["etag"] != before.headers["etag"]
    number = new.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    refused(mtls(w, cert, "POST", f"{EST}/reenroll-challenge", b""), 403, "device_revoked")
    revoked_list = session.get("/admin/mtls_enrollment/device/?status__exact=revoked")
    assert device_id(cert).encode() in revoked_list.body


class AdminSession:
    """A browser-like session: cookies and the CSRF token, through Django's own login form."""

    def __init__(self, site: EnrollmentSite) -> None:
        self.site = site
        self.cookies: dict[str, str] = {}

    def _headers(self, extra: Any = ()) -> list[tuple[str, str]]:
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return [*([("Cookie", cookie)] if cookie else []), *extra]

    def _keep(self, r: Response) -> Response:
        for name, value in re.findall(r"(csrftoken|sessionid)=([^;]+)", r.headers.get("set-cookie", "")):
            self.cookies[name] = value
        return r

    def get(self, path: str) -> Response:
        return self._keep(self.site.request("GET", path, None, self._headers()))

    def post(self, path: str, form: dict[str, str], *, referer: str) -> Response:
        from urllib.parse import urlencode

        data = urlencode({**form, "csrfmiddlewaretoken": self.cookies["csrftoken"]}).encode()
        headers = self._headers([("Content-Type", "application/x-www-form-urlencoded"),
                                 ("Referer", f"http://127.0.0.1:{self.site.port}{referer}"),
                                 ("Origin", f"http://127.0.0.1:{self.site.port}")])
        return self._keep(self.site.request("POST", path, data, headers))

    def login(self, username: str, password: str) -> None:
        self.get("/admin/login/")
        r = self.post("/admin/login/?next=/admin/", {"username": username, "password": password, "next": "/admin/"},
                      referer="/admin/login/")
        assert r.status == 302 and "sessionid" in self.cookies, r.body[:500]


def test_settings_without_the_issuing_key_fail_the_system_check(w: World, tmp_path: Path) -> None:
    from tests.support.enrollment_site import django_command, site_env

    env = site_env(json.loads(w.site.env["MTLS_TEST_DATABASE"]),
                   {"ISSUING_CA_CERT_FILE": str(w.pki.issuing_ca_cert_path), "IOS_APP_IDS": [APP_ID]},
                   Path(w.site.env["MTLS_TEST_SIGNING_KEY_FILE"]))
    message = ("MTLS_ENROLLMENT needs ISSUING_CA_KEY_FILE (the issuing CA from `mtls-proxy pki init --issuing-ca`: "
               "issuing-ca.pem and issuing-ca.key)")
    checked = django_command(env, "check", "--tag", "security")
    assert checked.returncode == 1
    assert f"?: (mtls_enrollment.E001) {message}" in checked.stderr
    # loading the URLconf (any server process, the full check) stops with the same message
    loaded = django_command(env, "check")
    assert loaded.returncode == 1
    assert loaded.stderr.strip().splitlines()[-1] == f"django.core.exceptions.ImproperlyConfigured: {message}"


def test_the_migrations_match_the_models(w: World) -> None:
    done = w.site.manage("makemigrations", "--check", "--dry-run", "mtls_enrollment")
    assert (done.returncode, done.stdout.strip()) == (0, "No changes detected in app 'mtls_enrollment'"), done.stderr
