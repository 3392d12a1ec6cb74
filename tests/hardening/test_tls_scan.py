"""An sslyze scan of the real listener, with a client certificate (mTLS), kept as a test.

Expected: no SSLv2/SSLv3/TLS 1.0/TLS 1.1; TLS 1.2 only with forward-secret AEAD suites; the
three TLS 1.3 suites; no compression; no client-initiated (insecure) renegotiation; not
vulnerable to Heartbleed or CCS injection; TLS_FALLBACK_SCSV and extended master secret on.
sslyze runs from its own virtual environment (tests/hardening/tools.py): it pins an older
cryptography than the project's.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.hardening.conftest import isolated
from tests.hardening.tools import ToolUnavailable, tool_python

# The test server certificate is ECDSA P-256, so the TLS 1.2 suites are the ECDSA ones.
TLS12_EXPECTED = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
}
TLS13_EXPECTED = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


@pytest.fixture(scope="module")
def sslyze_python():
    try:
        return tool_python("sslyze", "sslyze>=6,<7", "sslyze")
    except ToolUnavailable as exc:
        pytest.skip(f"sslyze unavailable: {exc}")


@pytest.mark.slow
def test_sslyze_scan_with_client_certificate(sslyze_python, tmp_path, pki, upstream):
    from tests.support.proxy import ProxyFactory

    factory = ProxyFactory(tmp_path, pki, upstream.url)
    try:
        proxy = factory.start(**isolated())
        client = pki.client("sslyze-client")
        out = tmp_path / "sslyze.json"
        run = subprocess.run(
            [str(sslyze_python), "-m", "sslyze", "--cert", str(client.cert), "--key", str(client.key),
             "--json_out", str(out), "--quiet", f"localhost:{proxy.port}"],
            capture_output=True, timeout=240,
        )
        assert out.exists(), run.stdout.decode(errors="replace") + run.stderr.decode(errors="replace")
        report = json.loads(out.read_text())
        logs = list(proxy.logs)
    finally:
        factory.close()

    (server,) = report["server_scan_results"]
    assert server["scan_status"] == "COMPLETED", server.get("connectivity_error_trace")
    res = server["scan_result"]

    def accepted(kind: str) -> set[str]:
        assert res[kind]["status"] == "COMPLETED", res[kind]
        return {c["cipher_suite"]["name"] for c in res[kind]["result"]["accepted_cipher_suites"]}

    for old in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites"):
        assert accepted(old) == set(), old
    assert accepted("tls_1_2_cipher_suites") == TLS12_EXPECTED
    assert accepted("tls_1_3_cipher_suites") == TLS13_EXPECTED
    for kind in ("tls_1_2_cipher_suites", "tls_1_3_cipher_suites"):
        for c in res[kind]["result"]["accepted_cipher_suites"]:
            assert c["cipher_suite"]["key_size"] >= 128
            assert c["cipher_suite"]["is_anonymous"] is False
            if kind == "tls_1_2_cipher_suites":
                assert c["ephemeral_key"] is not None  # forward secrecy

    assert res["tls_compression"]["result"] == {"supports_compression": False}
    reneg = res["session_renegotiation"]["result"]
    assert reneg["is_vulnerable_to_client_renegotiation_dos"] is False
    assert reneg["client_renegotiations_success_count"] == 0
    assert reneg["supports_secure_renegotiation"] is True  # RFC 5746 indication only; no legacy renegotiation
    assert res["heartbleed"]["result"] == {"is_vulnerable_to_heartbleed": False}
    assert res["openssl_ccs_injection"]["result"] == {"is_vulnerable_to_ccs_injection": False}
    assert res["tls_fallback_scsv"]["result"] == {"supports_fallback_scsv": True}
    assert res["tls_extended_master_secret"]["result"] == {"supports_ems_extension": True}
    # sslyze presented the client certificate: the accepted suites above are full mTLS handshakes, and
    # no refusal for a missing certificate was logged (the handshake log is rate-limited, so not asserted
    # line by line)
    assert not [line for line in logs if "reason=no_client_cert" in line]
