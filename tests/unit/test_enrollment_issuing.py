"""The device certificate and the wire encodings of the issuing CA (pure: the CA, key and time are arguments)."""

from __future__ import annotations

import datetime as dt
import uuid

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from mtls_proxy.django.enrollment.issuing import Revoked, certs_only, device_certificate, revocation_list
from mtls_proxy.pki.x509 import issue_ca

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def test_rsa_device_certificate_gets_key_encipherment_and_never_outlives_its_ca() -> None:
    ca = issue_ca({"CN": "Issuing", "O": "Acme"}, days=2)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    device = uuid.uuid4()
    cert = device_certificate(ca, key.public_key(), device, validity=dt.timedelta(days=7), now=NOW)
    assert cert.not_valid_after_utc == ca.cert.not_valid_after_utc
    assert cert.subject.rfc4514_string() == f"O=Acme,CN={device}"
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    assert cert.serial_number.bit_length() == 127


def test_certs_only_pkcs7_round_trips_and_crl_lists_reasons() -> None:
    ca = issue_ca("Issuing")
    cert = device_certificate(ca, ec.generate_private_key(ec.SECP256R1()).public_key(), uuid.uuid4(),
                              validity=dt.timedelta(days=7), now=NOW)
    assert set(pkcs7.load_der_pkcs7_certificates(certs_only([cert, ca.cert]))) == {cert, ca.cert}
    crl = revocation_list(ca, [Revoked(cert.serial_number, NOW, "keyCompromise"), Revoked(5, NOW, "")], number=7,
                          next_update=dt.timedelta(minutes=10), now=NOW)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    assert crl.next_update_utc == NOW + dt.timedelta(minutes=10)
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    unspecified = crl.get_revoked_certificate_by_serial_number(5)
    assert unspecified is not None and not list(unspecified.extensions)
