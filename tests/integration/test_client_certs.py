"""The certificate matrix: who gets in, and where each refusal happens (handshake or 403 + reason)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest

from mtls_proxy.certs import parse_peer
from mtls_proxy.pki import x509 as X
from tests.support.pki import TestPki
from tests.support.proxy import ProxyFactory, ProxyProcess
from tests.support.tlsclient import outcome, raw_exchange, status_and_body

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory, pki: TestPki, upstream) -> Iterator[tuple[ProxyProcess, TestPki]]:
    revoked = pki.client("m-revoked")
    denied_serial = pki.client("m-denied-serial")
    denied_fp = pki.client("m-denied-fp")
    denied_spki = pki.client("m-denied-spki")
    crl = pki.crl("matrix-crl.pem", [revoked])
    factory = ProxyFactory(tmp_path_factory.mktemp("matrix"), pki, upstream.url)
    cfg = factory.config()
    cfg["tls"]["crl"] = str(crl)
    cfg["policy"]["deny"] = {
        "serials": [denied_serial.serial_hex],
        "fingerprints": [parse_peer(denied_fp.issued.cert.public_bytes(_DER)).fingerprint_sha256],
        "spki": [parse_peer(denied_spki.issued.cert.public_bytes(_DER)).spki_sha256],
    }
    proxy = factory.start(cfg)
    yield proxy, pki
    factory.close()


from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

_DER = Encoding.DER


def _handshake_reason_logged(proxy: ProxyProcess, mark: int, reason: str) -> None:
    proxy.wait_for_log(rf"tls handshake failed: .*reason={reason}\b", 5, start=mark)


def test_valid_client_gets_200_and_django_sees_identity(matrix):
    proxy, pki = matrix
    c = pki.client("m-valid", subject={"CN": "m-valid", "O": "Acme", "OU": "phones"},
                   dns=["d1.devices.example"], uris=["spiffe://acme/device/1"], emails=["d1@example.com"])
    status, seen = proxy.get_json(pki.client_context(c), "/api/echo")
    assert status == 200
    cert = seen["client_cert"]
    assert cert["common_name"] == "m-valid"
    assert cert["serial"] == c.serial_hex
    assert cert["san_dns"] == ["d1.devices.example"]
    assert cert["san_uri"] == ["spiffe://acme/device/1"]
    assert cert["san_email"] == ["d1@example.com"]
    expected_fp = parse_peer(c.issued.cert.public_bytes(_DER)).fingerprint_sha256
    assert seen["headers"]["HTTP_X_CLIENT_CERT_FINGERPRINT"] == expected_fp


@pytest.mark.parametrize(
    ("name", "make", "alert", "reason"),
    [
        ("no-cert", None, "TLSV13_ALERT_CERTIFICATE_REQUIRED", "no_client_cert"),
        ("other-ca", lambda p: p.client("m-other-ca", issuer=p.other_ca), "TLSV1_ALERT_UNKNOWN_CA", "unknown_ca"),
        ("expired", lambda p: p.client("m-expired", not_before=NOW - dt.timedelta(days=30),
                                       not_after=NOW - dt.timedelta(days=1)),
         "SSLV3_ALERT_CERTIFICATE_EXPIRED", "cert_expired"),
        ("not-yet-valid", lambda p: p.client("m-future", not_before=NOW + dt.timedelta(days=1),
                                             not_after=NOW + dt.timedelta(days=30)),
         "SSLV3_ALERT_BAD_CERTIFICATE", "cert_not_yet_valid"),
        ("server-auth-eku", lambda p: p.client("m-serverauth", ekus=[X.EKU_SERVER]),
         "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "bad_eku"),
        ("self-signed", lambda p: _self_signed(p), "TLSV1_ALERT_UNKNOWN_CA", "unknown_ca"),
        ("revoked-in-crl", lambda p: p.client("m-revoked"), "SSLV3_ALERT_CERTIFICATE_REVOKED", "cert_revoked"),
    ],
)
def test_refused_at_handshake(matrix, name, make, alert, reason):
    proxy, pki = matrix
    client = make(pki) if make else None
    mark = proxy.log_count()
    result = outcome(proxy.port, pki.client_context(client))
    # The proxy flushes OpenSSL's alert before closing (mtls_proxy/tlsconn.py), so the client learns
    # why: with TLS 1.3 on its first read, since its side of the handshake finished first.
    assert result == f"tls:{alert}", (name, result)
    _handshake_reason_logged(proxy, mark, reason)


def _self_signed(pki: TestPki):
    from tests.support.pki import ClientFiles

    issued = X.issue_certificate({"CN": "m-self"}, ekus=[X.EKU_CLIENT])
    cert = pki.root / "m-self.pem"
    key = pki.root / "m-self.key"
    cert.write_bytes(issued.cert_pem())
    key.write_bytes(issued.key_pem())
    return ClientFiles("m-self", cert, key, issued)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.client("m-denied-serial"), "denylisted"),
        (lambda p: p.client("m-denied-fp"), "denylisted"),
        (lambda p: p.client("m-denied-spki"), "denylisted"),
        (lambda p: p.client("m-no-eku", ekus=None), "client_auth_eku_missing"),
        (lambda p: p.client("m-ca-leaf", is_ca=True, ekus=[X.EKU_CLIENT]), "leaf_is_ca"),
    ],
)
def test_refused_with_403_and_reason(matrix, make, reason):
    proxy, pki = matrix
    c = make(pki)
    mark = proxy.log_count()
    data = raw_exchange(proxy.port, pki.client_context(c),
                        b"GET /api/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    status, body = status_and_body(data)
    assert status == 403
    assert json.loads(body) == {"error": "forbidden", "reason": reason}
    proxy.wait_for_log(rf"denied: cn={c.name} .*reason={reason}", 5, start=mark)


def test_chain_longer_than_verify_depth_is_refused(proxies, pki, tmp_path):
    """root -> int1 -> int2 -> leaf: two intermediates plus the root is 3 CA certificates above the leaf."""
    root = X.issue_ca({"CN": "Depth Root"})
    int1 = X.issue_ca({"CN": "Depth Int 1"}, issuer=root)
    int2 = X.issue_ca({"CN": "Depth Int 2"}, issuer=int1)
    bundle = tmp_path / "depth-cas.pem"
    bundle.write_bytes(root.cert_pem() + int1.cert_pem() + int2.cert_pem())
    leaf = pki.client("depth-leaf", issuer=int2)
    ctx = pki.client_context(leaf)
    deep = proxies.start(tls={"client_ca": [str(bundle)], "verify_depth": 2})
    status, body = deep.get_json(ctx, "/api/echo")
    assert (status, body) == (403, {"error": "forbidden", "reason": "chain_too_long"})
    allowed = proxies.start(tls={"client_ca": [str(bundle)], "verify_depth": 3})
    status, body = allowed.get_json(ctx, "/api/echo")
    assert status == 200 and body["client_cert"]["common_name"] == "depth-leaf"
