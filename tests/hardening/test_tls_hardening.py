"""TLS hardening of the listener, with real clients (Python ssl, openssl s_client) against a real proxy.

Covered here (tests/integration/test_client_certs.py has the basic certificate matrix, another
engineer covers session resumption): old protocol versions, renegotiation, weak client keys,
chain constraints (path length, name constraints), a forged issuer, a CRL that expires while
the proxy runs, SNI vs Host. Each refusal is checked on both sides: the client gets no HTTP
exchange, and the proxy logs the reason code.
"""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import ssl
import subprocess
import time
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mtls_proxy.pki import x509 as X
from tests.hardening.conftest import isolated
from tests.hardening.wire import converse
from tests.support.pki import ClientFiles, TestPki
from tests.support.tlsclient import outcome

HTTP_GET = b"GET /api/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
OPENSSL = shutil.which("openssl")


@pytest.fixture(scope="module")
def tls_proxy(tmp_path_factory, pki, upstream):
    from tests.support.proxy import ProxyFactory

    factory = ProxyFactory(tmp_path_factory.mktemp("tls"), pki, upstream.url)
    proxy = factory.start(**isolated())
    yield proxy
    factory.close()


def _reason_logged(proxy, mark: int, reason: str) -> None:
    proxy.wait_for_log(rf"tls handshake failed: .*reason={reason}\b", 5, start=mark)


def _chain_client(pki: TestPki, name: str, leaf: X.Issued, *intermediates: X.Issued) -> ClientFiles:
    """Client files whose certificate file holds the leaf followed by its intermediates."""
    cert = pki.root / f"{name}-chain.pem"
    key = pki.root / f"{name}-chain.key"
    cert.write_bytes(leaf.cert_pem() + b"".join(i.cert_pem() for i in intermediates))
    key.write_bytes(leaf.key_pem())
    return ClientFiles(name, cert, key, leaf)


def _weak_ok_context(pki: TestPki, client: ClientFiles | None) -> ssl.SSLContext:
    """A client context at OpenSSL security level 0, so that it can *offer* what the proxy must refuse."""
    ctx = ssl.create_default_context(cafile=str(pki.server_ca_pem))
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


# --- protocol versions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls10_and_tls11_hellos_are_refused(tls_proxy, pki, version):
    ctx = _weak_ok_context(pki, pki.client("tls-old"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        v = getattr(ssl.TLSVersion, version)
        ctx.minimum_version = v
        ctx.maximum_version = v
    mark = tls_proxy.log_count()
    with socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=10) as raw, \
            pytest.raises((ssl.SSLError, ConnectionResetError)):
        ctx.wrap_socket(raw, server_hostname="localhost")
    _reason_logged(tls_proxy, mark, "protocol_version")


@pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
def test_openssl_s_client_tls1_1_is_refused(tls_proxy, pki):
    c = pki.client("tls-old")
    mark = tls_proxy.log_count()
    run = subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{tls_proxy.port}", "-servername", "localhost",
         "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", "-cert", str(c.cert), "-key", str(c.key),
         "-CAfile", str(pki.server_ca_pem)],
        input=HTTP_GET, capture_output=True, timeout=20,
    )
    out = run.stdout.decode(errors="replace") + run.stderr.decode(errors="replace")
    assert run.returncode == 1, out
    assert "no peer certificate available" in out  # the server never got as far as its Certificate
    assert "HTTP/1.1" not in out
    _reason_logged(tls_proxy, mark, "protocol_version")


@pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
def test_client_initiated_renegotiation_is_refused(tls_proxy, pki):
    """openssl s_client -tls1_2 then 'R': the proxy answers no_renegotiation; no request follows on it."""
    c = pki.client("tls-reneg")
    proc = subprocess.Popen(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{tls_proxy.port}", "-servername", "localhost",
         "-tls1_2", "-cert", str(c.cert), "-key", str(c.key), "-CAfile", str(pki.server_ca_pem)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert proc.stdin is not None
    try:
        time.sleep(1.0)  # handshake done
        proc.stdin.write(b"R\n")
        proc.stdin.flush()
        time.sleep(1.0)
        try:
            proc.stdin.write(HTTP_GET)
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    text = out.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in text  # the first handshake was a real mTLS one
    assert "RENEGOTIATING" in text
    assert "no renegotiation" in text
    assert "HTTP/1.1 200" not in text
    # the proxy is unharmed: a new connection is served
    assert outcome(tls_proxy.port, pki.client_context(c)) == "http:200"


# --- client certificates ---------------------------------------------------------------------------------------


def test_rsa_1024_client_key_is_refused(tls_proxy, pki):
    weak = pki.client("tls-rsa1024", key_type="rsa-1024")
    assert weak.issued.key.key_size == 1024
    mark = tls_proxy.log_count()
    result = outcome(tls_proxy.port, _weak_ok_context(pki, weak))
    assert result.startswith("tls:"), result
    _reason_logged(tls_proxy, mark, "weak_key")


def test_rsa_2048_client_key_is_accepted(tls_proxy, pki):
    ok = pki.client("tls-rsa2048", key_type="rsa-2048")
    assert outcome(tls_proxy.port, pki.client_context(ok)) == "http:200"


def test_path_length_constraint_is_enforced(tls_proxy, pki):
    """root -> intermediate(pathlen 0) -> sub-intermediate -> leaf: one CA too many."""
    inter = X.issue_ca({"CN": "Pathlen0 Intermediate", "O": "Acme"}, issuer=pki.ca, path_length=0)
    sub = X.issue_ca({"CN": "Sub Intermediate", "O": "Acme"}, issuer=inter)
    leaf = X.issue_client({"CN": "tls-too-deep", "O": "Acme"}, sub)
    client = _chain_client(pki, "tls-too-deep", leaf, sub, inter)
    mark = tls_proxy.log_count()
    assert outcome(tls_proxy.port, pki.client_context(client)).startswith("tls:")
    _reason_logged(tls_proxy, mark, "chain_too_long")
    # control: a leaf issued by the pathlen-0 intermediate itself is fine
    good = _chain_client(pki, "tls-pathlen-ok", X.issue_client({"CN": "tls-pathlen-ok"}, inter), inter)
    assert outcome(tls_proxy.port, pki.client_context(good)) == "http:200"


def test_name_constrained_intermediate_is_enforced(tls_proxy, pki):
    inter = X.issue_ca({"CN": "Constrained Intermediate", "O": "Acme"}, issuer=pki.ca,
                       permitted_dns=["devices.acme.example"])
    inside = X.issue_client({"CN": "in", "O": "Acme"}, inter, dns=["d1.devices.acme.example"])
    outside = X.issue_client({"CN": "out", "O": "Acme"}, inter, dns=["d1.evil.example"])
    ok = _chain_client(pki, "tls-nc-in", inside, inter)
    bad = _chain_client(pki, "tls-nc-out", outside, inter)
    assert outcome(tls_proxy.port, pki.client_context(ok)) == "http:200"
    mark = tls_proxy.log_count()
    assert outcome(tls_proxy.port, pki.client_context(bad)).startswith("tls:")
    _reason_logged(tls_proxy, mark, "name_constraints")


def _forged_leaf(pki: TestPki, name: str, *, with_akid: bool) -> ClientFiles:
    """A leaf whose issuer *name* is the trusted CA's, signed by an impostor key."""
    impostor = X.issue_ca({"CN": "Test Client CA", "O": "Acme"})  # same subject, different key
    assert impostor.cert.subject == pki.ca.cert.subject
    key = X.generate_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(X.build_name({"CN": name, "O": "Acme"}))
        .issuer_name(pki.ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(X.random_serial())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([X.EKU_CLIENT]), critical=False)
    )
    if with_akid:  # claims the *real* CA's key identifier, so the lookup lands on the real CA
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.ca.key.public_key()), critical=False
        )
    cert = builder.sign(impostor.key, hashes.SHA256())
    issued = X.Issued(cert=cert, key=key)
    return _chain_client(pki, name, issued)


@pytest.mark.parametrize(
    ("with_akid", "reason", "detail"),
    [
        # X509_STRICT wants an AKID on every issued certificate: refused before the signature check,
        # and the log names the setting
        (False, "x509_strict", ("Missing Authority Key Identifier", "(refused by tls.x509_strict: true")),
        # pointing at the real CA's key: the lookup succeeds and the signature check fails
        (True, "bad_signature", ("certificate signature failure",)),
    ],
    ids=["no-akid", "real-ca-akid"],
)
def test_issuer_name_match_signed_by_another_key_is_refused(tls_proxy, pki, with_akid, reason, detail):
    forged = _forged_leaf(pki, f"tls-forged-{int(with_akid)}", with_akid=with_akid)
    mark = tls_proxy.log_count()
    assert outcome(tls_proxy.port, pki.client_context(forged)).startswith("tls:")
    line = tls_proxy.wait_for_log(rf"tls handshake failed: .*reason={reason}\b.*", 5, start=mark).group(0)
    assert all(part in line for part in detail), line


@pytest.mark.slow
def test_crl_that_expires_at_runtime_refuses_handshakes(tmp_path, pki, upstream):
    """nextUpdate passes while the proxy runs: new handshakes fail closed with reason crl_expired."""
    from tests.support.proxy import ProxyFactory

    now = dt.datetime.now(dt.UTC)
    next_update = now + dt.timedelta(seconds=6)
    crl = X.build_crl(pki.ca, [], this_update=now - dt.timedelta(minutes=1), next_update=next_update)
    crl_path = tmp_path / "short.crl.pem"
    crl_path.write_bytes(X.crl_pem(crl))
    factory = ProxyFactory(tmp_path, pki, upstream.url)
    try:
        cfg = factory.config(**isolated())
        cfg["tls"]["crl"] = str(crl_path)
        proxy = factory.start(cfg)
        ctx = pki.client_context(pki.client("tls-crl-runtime"))
        assert outcome(proxy.port, ctx) == "http:200"  # the CRL is current: served
        time.sleep(max(0.0, (next_update - dt.datetime.now(dt.UTC)).total_seconds()) + 1.0)
        mark = proxy.log_count()
        assert outcome(proxy.port, ctx).startswith("tls:")
        _reason_logged(proxy, mark, "crl_expired")
    finally:
        factory.close()


# --- SNI vs Host ---------------------------------------------------------------------------------------------------


def test_host_other_than_sni_is_421(tls_proxy, pki):
    ctx = pki.client_context(pki.client("tls-sni"))
    req = b"GET /api/echo HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n"
    conv = converse(tls_proxy.port, ctx, req, server_hostname="localhost")
    assert conv.statuses == [421]
    assert conv.responses[0].json() == {"error": "misdirected request", "reason": "host_sni_mismatch"}
    # the port in Host and the case of the name do not matter
    same = b"GET /api/echo HTTP/1.1\r\nHost: LOCALHOST:443\r\nConnection: close\r\n\r\n"
    assert converse(tls_proxy.port, ctx, same, server_hostname="localhost").statuses == [200]


def test_sni_other_than_host_is_421(tls_proxy, pki):
    ctx = pki.client_context(pki.client("tls-sni"))
    ctx.check_hostname = False  # the client asks for a name the server certificate does not carry
    conv = converse(tls_proxy.port, ctx, HTTP_GET, server_hostname="other.example")
    assert conv.statuses == [421]
    assert conv.responses[0].reason == "host_sni_mismatch"


def test_server_names_apply_without_sni(tmp_path, pki, upstream):
    """No SNI (a client dialling an IP): with tls.server_names, Host must still be one of them."""
    from tests.support.proxy import ProxyFactory

    factory = ProxyFactory(tmp_path, pki, upstream.url)
    try:
        proxy = factory.start(**isolated(tls={"server_names": ["localhost"]}))
        ctx = pki.client_context(pki.client("tls-sni"))
        ctx.check_hostname = False
        bad = b"GET /api/echo HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n"
        conv = converse(proxy.port, ctx, bad, server_hostname=None)
        assert conv.statuses == [421]
        assert conv.responses[0].reason == "host_sni_mismatch"
        assert converse(proxy.port, ctx, HTTP_GET, server_hostname=None).statuses == [200]
    finally:
        factory.close()
