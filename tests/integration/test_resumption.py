"""TLS 1.3 session resumption against the real proxy: it works, and a reload cannot be bypassed by it.

A resumed handshake skips certificate verification (and so the CRL check) on the server. The
proxy builds a new SSLContext on every reload and OpenSSL gives each context its own random
ticket keys, so a ticket issued before a reload cannot be resumed after it: the client falls back
to a full handshake, in which its certificate is verified against the new CRLs.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from typing import Any

ECHO = "/api/echo"


def one_request(proxy: Any, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
                ) -> tuple[str, bool, int, dict[str, Any], ssl.SSLSession]:
    """A new TLS connection (offering ``session`` if given), one GET, the response read whole.

    Returns (TLS version, session_reused, status, JSON body, the session to resume next time).
    The session is taken *after* the response: with TLS 1.3 the tickets arrive after the handshake.
    """
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost", session=session, suppress_ragged_eofs=False) as s:
        s.sendall(f"GET {ECHO} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        resp = http.client.HTTPResponse(s)
        resp.begin()
        body = json.loads(resp.read())
        new_session = s.session
        assert new_session is not None and new_session.has_ticket
        return s.version() or "", s.session_reused, resp.status, body, new_session


def reload_with(proxies: Any, proxy: Any, **overrides: Any) -> None:
    cfg = proxies.config(**overrides)
    cfg["listen"] = f"127.0.0.1:{proxy.port}"
    proxy.write_config(cfg)
    proxy.reload()


def test_tls13_resumption_works_without_reload(proxies, pki):
    client = pki.client("resume-plain")
    proxy = proxies.start(tls={"crl": str(pki.crl("resume-plain-crl.pem", []))})
    ctx = pki.client_context(client)

    version, reused, status, body, session = one_request(proxy, ctx)
    assert (version, reused, status) == ("TLSv1.3", False, 200)
    for _ in range(2):
        version, reused, status, body, session = one_request(proxy, ctx, session)
        assert (version, reused, status) == ("TLSv1.3", True, 200)
        # the resumed connection still knows (and forwards) the client's certificate
        assert body["client_cert"]["common_name"] == "resume-plain"


def test_reload_revoking_the_cert_defeats_resumption(proxies, pki):
    """After a reload whose CRL revokes the client, its old ticket cannot get it in.

    What happens, exactly: the ticket (encrypted under the old context's keys) is not accepted,
    the server runs a full handshake, verifies the certificate against the new CRL and refuses it
    (log: reason=cert_revoked). The client never gets an HTTP response: with TLS 1.3 its side of the
    handshake completes, then the first read hits EOF (the event loop drops the TLS alert, see
    test_reload.tls_refusal). It is *not* a resumed connection answered 403 ``revoked``.
    """
    client = pki.client("resume-revoked")
    proxy = proxies.start(tls={"crl": str(pki.crl("resume-revoked-crl0.pem", []))})
    ctx = pki.client_context(client)
    *_, session = one_request(proxy, ctx)
    version, reused, status, _, session = one_request(proxy, ctx, session)
    assert (version, reused, status) == ("TLSv1.3", True, 200)  # the ticket is good before the reload

    reload_with(proxies, proxy, tls={"crl": str(pki.crl("resume-revoked-crl1.pem", [client]))})

    mark = proxy.log_count()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost", session=session, suppress_ragged_eofs=False) as s:
        assert s.version() == "TLSv1.3"
        s.sendall(f"GET {ECHO} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        try:
            data = s.recv(65536)
        except ssl.SSLError as exc:
            assert exc.reason == "SSLV3_ALERT_CERTIFICATE_REVOKED"
        else:
            raise AssertionError(f"the resumed client got an answer: {data[:300]!r}")
        assert s.session_reused is False
    proxy.wait_for_log(
        r"tls handshake failed: client=127\.0\.0\.1 reason=cert_revoked "
        r"detail=\[SSL: CERTIFICATE_VERIFY_FAILED\] certificate verify failed: certificate revoked",
        10, start=mark,
    )
    assert not any("cn=resume-revoked" in line for line in proxy.logs[mark:])


def test_any_reload_invalidates_tickets_but_not_the_client(proxies, pki):
    """A reload that changes nothing for this client: its old ticket is not resumed (new context,
    new ticket keys), the full handshake succeeds, and the new ticket resumes again."""
    client = pki.client("resume-kept")
    proxy = proxies.start()
    ctx = pki.client_context(client)
    *_, session = one_request(proxy, ctx)
    assert one_request(proxy, ctx, session)[1] is True

    reload_with(proxies, proxy, policy={"rules": [{"name": "everything", "paths": ["/"], "clients": "any"}]})

    version, reused, status, body, session = one_request(proxy, ctx, session)
    assert (version, reused, status) == ("TLSv1.3", False, 200)
    assert body["client_cert"]["common_name"] == "resume-kept"
    version, reused, status, _, _ = one_request(proxy, ctx, session)
    assert (version, reused, status) == ("TLSv1.3", True, 200)
    proxy.wait_for_log(r"cn=resume-kept .* rule=everything reason=allowed", 5)
