"""A ``client_auth: optional`` listener: clients without a certificate reach only ``clients: none`` rules.

What enrollment needs (a phone has no certificate before it enrolls), without opening anything
else: a certificate that is presented is still verified at the handshake; a client without one
is refused by every rule that does not say ``none`` (403 ``client_cert_required``), carries no
identity to Django but the proxy's signature over "no certificate" (any identity header it sends
is stripped), and is rate-limited per address.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from tests.support.rawhttp import RawConn, request_bytes

pytestmark = pytest.mark.timeout(60)

POLICY = {"rules": [
    {"name": "enroll", "paths": ["/api/echo/enroll"], "clients": ["none", "any"]},
    {"name": "api", "paths": ["/api/"], "clients": "any"},
]}


@pytest.fixture
def optional_proxy(proxies: Any) -> Any:
    cfg = proxies.config(policy=POLICY, limits={"anonymous_requests_per_minute": 5})
    cfg["listen"] = [{"address": cfg["listen"], "client_auth": "optional"}]
    return proxies.start(cfg)


def anonymous_ctx(pki: Any) -> ssl.SSLContext:
    return pki.client_context(None)


def get(proxy: Any, ctx: ssl.SSLContext, path: str, headers: list[tuple[str, str]] | None = None) -> Any:
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("GET", path, headers or [], host=f"localhost:{proxy.port}"))
        return c.read_response()


def test_without_a_certificate_only_none_rules_admit(optional_proxy, pki):
    ctx = anonymous_ctx(pki)
    resp = get(optional_proxy, ctx, "/api/echo/enroll", [("X-Client-Cert-Subject", "CN=forged"),
                                                          ("X_Client_Cert_Serial", "01")])
    assert resp.status == 200
    seen = resp.json()
    assert seen["client_cert"] is None  # Django: verified request, no certificate
    headers = seen["headers"]
    assert "HTTP_X_CLIENT_CERT_SUBJECT" not in headers and "HTTP_X_CLIENT_CERT_SERIAL" not in headers
    assert headers["HTTP_X_CLIENT_CERT_SIGNATURE"].startswith("v2;")  # the proxy's "no certificate"
    resp = get(optional_proxy, ctx, "/api/echo")
    assert (resp.status, resp.json()) == (403, {"error": "forbidden", "reason": "client_cert_required"})
    optional_proxy.wait_for_log(r"denied: cn=- fp=- GET /api/echo rule=api reason=client_cert_required", 5)


def test_a_certificate_presented_on_the_optional_listener_is_verified_and_used(optional_proxy, pki):
    client = pki.client("optional-listener-device")
    resp = get(optional_proxy, pki.client_context(client), "/api/echo")
    assert resp.status == 200
    assert resp.json()["client_cert"]["common_name"] == "optional-listener-device"
    stranger = pki.client("optional-listener-stranger", issuer=pki.other_ca)
    with pytest.raises(ssl.SSLError) as refused:
        get(optional_proxy, pki.client_context(stranger), "/api/echo")
    assert refused.value.reason in ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE")


def test_clients_without_a_certificate_are_rate_limited_per_address(optional_proxy, pki):
    ctx = anonymous_ctx(pki)
    statuses = [get(optional_proxy, ctx, "/api/echo/enroll").status for _ in range(7)]
    assert statuses[:5] == [200] * 5
    assert statuses[5:] == [429, 429]
    resp = get(optional_proxy, ctx, "/api/echo/enroll")
    assert resp.json() == {"error": "too many requests", "reason": "rate_limited"}
    # devices with a certificate are not counted against it
    assert get(optional_proxy, pki.client_context(pki.client("optional-rate-device")), "/api/echo/enroll").status == 200


def test_the_default_listener_still_requires_a_certificate(proxies, pki):
    proxy = proxies.start(policy=POLICY)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(proxy, anonymous_ctx(pki), "/api/echo/enroll")
