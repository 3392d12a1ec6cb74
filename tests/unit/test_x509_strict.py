"""What strict mode refuses, named ahead of time; and handshake failures only strict mode causes."""

from __future__ import annotations

import datetime as dt
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mtls_proxy.pki import x509 as X
from mtls_proxy.tls import classify_handshake_error, handshake_failure_hint
from mtls_proxy.x509_strict import strict_ca_problems, strict_ca_refusals, strict_leaf_refusals

# a day after collection: certificates issued later by fixtures (back-dated 5 min) are valid at NOW
# however long the run before this module took
NOW = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)


def build(subject: str, *, issuer: X.Issued | None = None, ca: bool, ski: bool = True, akid: bool = True,
          bc_critical: bool = True, ku: bool = True, akid_critical: bool = False, empty_san: bool = False) -> X.Issued:
    key = X.generate_key()
    name = X.build_name(subject)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.cert.subject if issuer else name)
         .public_key(key.public_key()).serial_number(X.random_serial())
         .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=bc_critical))
    if ku:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, ca, ca, False, False), critical=True)
    if ski:
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if akid and issuer is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                            critical=akid_critical)
    if empty_san:
        b = b.add_extension(x509.SubjectAlternativeName([]), critical=False)
    return X.Issued(b.sign(issuer.key if issuer else key, hashes.SHA256()), key)


ROOT = build("root", ca=True)


@pytest.mark.parametrize(
    ("make", "refusals"),
    [
        (lambda: ROOT, []),
        (lambda: X.issue_ca({"CN": "pki-made"}), []),
        (lambda: build("no-ski", ca=True, ski=False), ["has no Subject Key Identifier"]),
        (lambda: build("bc", ca=True, bc_critical=False), ["does not mark basicConstraints critical"]),
        (lambda: build("no-ku", ca=True, ku=False), ["has no keyUsage extension"]),
        (lambda: build("inter", issuer=ROOT, ca=True, akid=False), ["has no Authority Key Identifier (keyid)"]),
        (lambda: build("inter-ok", issuer=ROOT, ca=True), []),
    ],
    ids=["root", "pki", "no-ski", "bc-not-critical", "no-ku", "intermediate-no-akid", "intermediate"],
)
def test_strict_ca_refusals(make, refusals):
    assert strict_ca_refusals(make().cert) == refusals


@pytest.mark.parametrize(
    ("make", "refusals"),
    [
        (lambda: X.issue_client("pki-made", ROOT), []),
        (lambda: build("no-akid", issuer=ROOT, ca=False, akid=False), ["has no Authority Key Identifier (keyid)"]),
        (lambda: build("akid-crit", issuer=ROOT, ca=False, akid_critical=True),
         ["marks its Authority Key Identifier critical"]),
        (lambda: build("empty-san", issuer=ROOT, ca=False, empty_san=True),
         ["has an empty Subject Alternative Name extension"]),
        # a self-signed leaf (a pinned certificate) stands alone: a one-certificate chain is not checked
        (lambda: build("alone", ca=False, ski=False), []),
    ],
    ids=["pki", "no-akid", "akid-critical", "empty-san", "self-signed"],
)
def test_strict_leaf_refusals(make, refusals):
    assert strict_leaf_refusals(make().cert) == refusals


def test_strict_ca_problems_name_the_setting():
    [problem] = strict_ca_problems(build("No SKI", ca=True, ski=False).cert)
    assert problem == ("the CA 'CN=No SKI' has no Subject Key Identifier: with tls.x509_strict: true (the default) "
                       "OpenSSL refuses every client chain through it; re-issue the CA, or set tls.x509_strict: false")


def verify_error(message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    exc.verify_message = message
    return exc


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("Missing Authority Key Identifier", "x509_strict"),
        ("Missing Subject Key Identifier", "x509_strict"),
        ("Signature algorithms inconsistent", "x509_strict"),  # not bad_signature
        ("CA cert does not include key usage extension", "x509_strict"),
        ("certificate signature failure", "bad_signature"),
        ("self-signed certificate", "unknown_ca"),
    ],
)
def test_strict_only_failures_are_classified_and_hinted(message, reason):
    assert classify_handshake_error(verify_error(message)) == reason
    hint = handshake_failure_hint(reason)
    assert ("tls.x509_strict: false" in hint) == (reason == "x509_strict")
