"""SIGHUP reload against the real proxy process, the real Django upstream and real TLS clients.

What a reload must do (the issue's contract): swap trust (client CAs), CRLs and policy
at once for every *new* connection, judge the *next request* of every open keep-alive
connection by the new policy and revocations, lose no request of a client that stays
valid, and keep the old configuration serving when the new one is broken.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mtls_proxy.pki import x509 as X

ECHO = "/api/echo"


# --- helpers ---------------------------------------------------------------------------------------------------


def keepalive(proxy: Any, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
    """An HTTPS connection that is connected (handshake done) now, to be reused for several requests."""
    conn = proxy.connection(ctx, timeout=15)
    conn.connect()
    return conn


def get(conn: http.client.HTTPSConnection, path: str) -> tuple[int, dict[str, Any]]:
    """One request on ``conn``; http.client would silently reconnect a closed connection, so refuse that."""
    sock_before = conn.sock
    assert sock_before is not None, "the connection was closed before this request"
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    assert conn.sock is sock_before or conn.sock is None, "http.client reconnected behind our back"
    return resp.status, json.loads(body)


def tls_refusal(proxy: Any, ctx: ssl.SSLContext) -> tuple[str, ssl.SSLError]:
    """Open a new connection and send a request; return (stage, TLS error). Fails if the client got in.

    What a refused client sees, exactly: the alert OpenSSL chose (the proxy flushes it before
    closing, see mtls_proxy/tlsconn.py). With TLS 1.3 the client's side of the handshake is already
    complete when the server checks the certificate, so the alert surfaces on the first read (stage
    "read"); with TLS 1.2 it ends do_handshake() (stage "handshake"). The proxy's log line
    (``tls handshake failed ... reason=...``) is asserted separately.
    """
    stage = "handshake"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as s:
                stage = "read"
                s.sendall(b"GET /api/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = s.recv(65536)
        except ssl.SSLError as exc:
            return stage, exc
    raise AssertionError(f"the connection got in, read {data[:200]!r}")


def assert_refused(proxy: Any, ctx: ssl.SSLContext, reason: str, *, tls12: bool = False) -> None:
    """A new connection is refused during the TLS handshake, and the proxy logs why."""
    mark = proxy.log_count()
    stage, err = tls_refusal(proxy, ctx)
    assert err.reason == ALERT[reason], err
    assert stage == ("handshake" if tls12 else "read"), (stage, err)
    handshake_failure_logged(proxy, reason, mark)


#: the alert the refused client receives for each reason code
ALERT = {"cert_revoked": "SSLV3_ALERT_CERTIFICATE_REVOKED", "unknown_ca": "TLSV1_ALERT_UNKNOWN_CA"}
#: the verify error OpenSSL reports (in the proxy's log) for each reason code
VERIFY_DETAIL = {"cert_revoked": "certificate revoked", "unknown_ca": "unable to get local issuer certificate"}


def handshake_failure_logged(proxy: Any, reason: str, mark: int) -> str:
    m = proxy.wait_for_log(
        rf"WARNING mtls_proxy tls handshake failed: client=127\.0\.0\.1 reason={reason} "
        rf"detail=\[SSL: CERTIFICATE_VERIFY_FAILED\] certificate verify failed: {VERIFY_DETAIL[reason]} \(",
        10, start=mark,
    )
    return m.string


def write_ca(tmp_path: Path, name: str) -> tuple[X.Issued, Path]:
    ca = X.issue_ca({"CN": name, "O": "Acme"})
    path = tmp_path / f"{name.replace(' ', '-')}.pem"
    path.write_bytes(ca.cert_pem())
    return ca, path


# --- 1. reloads under load -----------------------------------------------------------------------------------


def test_twenty_reloads_under_load_lose_no_request(proxies, pki, tmp_path):
    """4 client threads (2 keep-alive, 2 new connection per request) run through 20 SIGHUPs.

    Every reload changes the client CA list (a second CA in/out), the CRL (a bystander's cert
    revoked/unrevoked) and the policy (a deny rule on /api/slow, which the load never uses).
    After each reload the main thread checks that the change really applied, so the test cannot
    pass by reloads silently failing. The load must see 0 failures.
    """
    ca2, ca2_pem = write_ca(tmp_path, "Reload Load Second CA")
    load_clients = [pki.client(f"reload-load-{i}") for i in range(4)]
    bystander = pki.client("reload-load-bystander")
    ca2_client = pki.client("reload-load-ca2-client", issuer=ca2, subject={"CN": "reload-load-ca2", "O": "Acme"})
    crl_clean = pki.crl("reload-load-crl-clean.pem", [])
    crl_revoking = pki.crl("reload-load-crl-revoking.pem", [bystander])
    crl_ca2 = pki.crl("reload-load-crl-ca2.pem", [], issuer=ca2)

    def config(round_no: int) -> dict[str, Any]:
        with_ca2 = round_no % 2 == 1
        revoke = round_no % 3 == 1
        deny_slow = round_no % 4 in (1, 2)
        rules: list[dict[str, Any]] = [{"name": "all", "paths": ["/"], "clients": "any"}]
        if deny_slow:
            rules.insert(0, {"name": "no-slow", "paths": ["/api/slow"], "action": "deny"})
        crls = [str(crl_revoking if revoke else crl_clean)] + ([str(crl_ca2)] if with_ca2 else [])
        cas = [str(pki.ca_pem)] + ([str(ca2_pem)] if with_ca2 else [])
        cfg = proxies.config(tls={"client_ca": cas, "crl": crls}, policy={"rules": rules},
                             logging={"level": "info", "access_log": False})
        cfg["listen"] = f"127.0.0.1:{proxy.port}"
        return cfg

    proxy = proxies.start(proxies.config(tls={"crl": [str(crl_clean)]}, logging={"level": "info", "access_log": False}))
    proxy.write_config(config(0))
    proxy.reload()

    stop = threading.Event()
    failures: list[str] = []
    counts = [0, 0, 0, 0]
    new_conns = [0, 0, 0, 0]

    def worker(i: int) -> None:
        client = load_clients[i]
        ctx = pki.client_context(client)
        keep = i < 2
        conn: http.client.HTTPSConnection | None = None
        n = 0
        while not stop.is_set():
            n += 1
            try:
                if conn is None:
                    conn = keepalive(proxy, ctx)
                    new_conns[i] += 1
                status, body = get(conn, f"{ECHO}?w={i}&n={n}")
                if status != 200 or body["query_string"] != f"w={i}&n={n}" \
                        or body["client_cert"]["common_name"] != client.name:
                    failures.append(f"worker {i} request {n}: {status} {body}")
                else:
                    counts[i] += 1
            except Exception as exc:
                failures.append(f"worker {i} request {n}: {type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
                continue
            if not keep:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        for round_no in range(1, 21):
            cfg = config(round_no)
            proxy.write_config(cfg)
            proxy.reload()
            # the change applied: second CA, CRL and policy as written (17 refused handshakes in all,
            # under the proxy's 20-per-10s limit on handshake-failure log lines, so each one is logged)
            ca2_ctx = pki.client_context(ca2_client)
            if round_no % 2 == 1:
                assert proxy.get_json(ca2_ctx, ECHO)[0] == 200, f"round {round_no}: second CA not trusted"
            else:
                assert_refused(proxy, ca2_ctx, "unknown_ca")
            if round_no % 3 == 1:
                assert_refused(proxy, pki.client_context(bystander), "cert_revoked")
            else:
                assert proxy.get_json(pki.client_context(bystander), ECHO)[0] == 200, round_no
            status, body = proxy.get_json(pki.client_context(load_clients[0]), "/api/slow?seconds=0")
            if round_no % 4 in (1, 2):
                assert (status, body["reason"]) == (403, "denied_by_rule"), round_no
            else:
                assert (status, body) == (200, {"slept": 0.0}), round_no
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    elapsed = time.monotonic() - started

    assert failures == []
    assert not any(t.is_alive() for t in threads)
    logs = "\n".join(proxy.logs)
    assert logs.count("reloaded: generation") == 21
    assert "reload failed" not in logs
    total = sum(counts)
    print(f"load: {total} requests in {elapsed:.1f}s per worker {counts}, new connections {new_conns}")
    # keep-alive workers reused one connection throughout; the others made one per request
    assert new_conns[0] == new_conns[1] == 1
    assert new_conns[2] == counts[2] and new_conns[3] == counts[3]
    assert min(counts) >= 20, counts
    assert total >= 200, counts
    assert proxy.process.poll() is None


# --- 2. a certificate revoked by reload ------------------------------------------------------------------------


def test_cert_revoked_by_reload_is_refused_on_new_and_open_connections(proxies, pki):
    """After SIGHUP with a CRL revoking ``victim``: its new connection fails the TLS handshake
    (client sees the certificate_revoked alert, proxy logs reason=cert_revoked); its keep-alive
    connection opened before the reload gets 403 ``revoked`` on its next request. Another client's
    open connection and new connections are undisturbed."""
    victim = pki.client("reload-victim")
    other = pki.client("reload-bystander")
    crl_clean = pki.crl("reload-victim-crl-clean.pem", [])
    proxy = proxies.start(tls={"crl": str(crl_clean)})

    victim_ctx, other_ctx = pki.client_context(victim), pki.client_context(other)
    victim_conn, other_conn = keepalive(proxy, victim_ctx), keepalive(proxy, other_ctx)
    assert get(victim_conn, f"{ECHO}?before=1")[0] == 200
    assert get(other_conn, f"{ECHO}?before=1")[0] == 200

    cfg = proxies.config(tls={"crl": str(pki.crl("reload-victim-crl.pem", [victim]))})
    cfg["listen"] = f"127.0.0.1:{proxy.port}"
    proxy.write_config(cfg)
    proxy.reload()

    mark = proxy.log_count()
    stage, err = tls_refusal(proxy, victim_ctx)
    assert (stage, err.reason) == ("read", "SSLV3_ALERT_CERTIFICATE_REVOKED")
    handshake_failure_logged(proxy, "cert_revoked", mark)
    assert_refused(proxy, pki.client_context(victim, max_version=ssl.TLSVersion.TLSv1_2), "cert_revoked",
                   tls12=True)

    status, body = get(victim_conn, f"{ECHO}?after=1")
    assert (status, body) == (403, {"error": "forbidden", "reason": "revoked"})
    proxy.wait_for_log(r"denied: cn=reload-victim .* reason=revoked", 5)

    status, body = get(other_conn, f"{ECHO}?after=1")
    assert status == 200 and body["query_string"] == "after=1"
    assert body["client_cert"]["common_name"] == "reload-bystander"
    status, body = proxy.get_json(other_ctx, f"{ECHO}?new=1")
    assert status == 200 and body["client_cert"]["common_name"] == "reload-bystander"
    victim_conn.close()
    other_conn.close()


# --- 3. a broken new config --------------------------------------------------------------------------------------


def _broken(kind: str, proxies: Any, pki: Any, tmp_path: Path) -> tuple[dict[str, Any] | str, str]:
    """A config that would also flip the policy (deny echo, allow slow) if it were applied, and the
    pattern the reload failure must log (the key path and the problem)."""
    cfg = proxies.config(policy={"rules": [{"name": "no-echo", "paths": [ECHO], "action": "deny"},
                                           {"name": "all", "paths": ["/"], "clients": "any"}]})
    if kind == "syntax":
        return "listen: [127.0.0.1:1\ntls: {cert: x\n  policy: : :\n", r"^  not valid YAML at line 2, column 4$"
    if kind == "missing_cert":
        cfg["tls"]["cert"] = str(tmp_path / "no-such-cert.pem")
        return cfg, r"^  tls\.cert: .*no-such-cert\.pem: no such file$"
    if kind == "ca_without_ca":
        leaf = pki.client("reload-not-a-ca")
        cfg["tls"]["client_ca"] = str(leaf.cert)
        return cfg, r"^  tls\.client_ca: .*reload-not-a-ca\.pem: holds no CA certificate"
    if kind == "key_mismatch":
        cfg["tls"]["key"] = str(pki.client("reload-wrong-key").key)
        return cfg, r"^  tls\.key: .*reload-wrong-key\.key: does not match the certificate"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["syntax", "missing_cert", "ca_without_ca", "key_mismatch"])
def test_broken_reload_keeps_the_old_config_serving(proxies, pki, tmp_path, kind):
    client = pki.client("reload-broken-client")
    ctx = pki.client_context(client)
    proxy = proxies.start(policy={"rules": [{"name": "no-slow", "paths": ["/api/slow"], "action": "deny"},
                                            {"name": "all", "paths": ["/"], "clients": "any"}]})
    open_conn = keepalive(proxy, ctx)
    assert get(open_conn, ECHO)[0] == 200
    gen = int(proxy.wait_for_log(r"listening on .* \(generation (\d+)\)").group(1))

    broken, pattern = _broken(kind, proxies, pki, tmp_path)
    if isinstance(broken, str):
        proxy.config_path.write_text(broken)
    else:
        broken["listen"] = f"127.0.0.1:{proxy.port}"
        proxy.write_config(broken)
    mark = proxy.log_count()
    proxy.reload(expect_ok=False)
    proxy.wait_for_log(rf"ERROR mtls_proxy reload failed, keeping generation {gen}: "
                       rf"{re.escape(str(proxy.config_path))}: 1 problem\(s\)$", 5, start=mark)
    proxy.wait_for_log(pattern, 5, start=mark)
    assert not any("reloaded: generation" in line for line in proxy.logs[mark:])

    # the old config still serves: old policy (echo allowed, slow denied), old trust, both connections
    status, body = get(open_conn, f"{ECHO}?still=1")
    assert status == 200 and body["query_string"] == "still=1"
    status, body = get(open_conn, "/api/slow?seconds=0")
    assert (status, body) == (403, {"error": "forbidden", "reason": "denied_by_rule"})
    status, body = proxy.get_json(ctx, f"{ECHO}?new=1")
    assert status == 200 and body["client_cert"]["common_name"] == "reload-broken-client"
    assert proxy.get_json(ctx, "/api/slow?seconds=0")[0] == 403
    assert proxy.process.poll() is None

    # and it is not wedged: a good config reloads
    good = proxies.config()
    good["listen"] = f"127.0.0.1:{proxy.port}"
    proxy.write_config(good)
    proxy.reload()
    assert get(open_conn, "/api/slow?seconds=0") == (200, {"slept": 0.0})
    open_conn.close()


# --- 4. CRL at start; a CA removed by reload -----------------------------------------------------------------


def test_crl_at_start_refuses_revoked_cert_at_handshake(proxies, pki):
    revoked = pki.client("reload-start-revoked")
    good = pki.client("reload-start-good")
    proxy = proxies.start(tls={"crl": str(pki.crl("reload-start-crl.pem", [revoked]))})

    assert_refused(proxy, pki.client_context(revoked), "cert_revoked")
    assert_refused(proxy, pki.client_context(revoked, max_version=ssl.TLSVersion.TLSv1_2), "cert_revoked",
                   tls12=True)
    assert not any("access" in line and "reload-start-revoked" in line for line in proxy.logs)

    status, body = proxy.get_json(pki.client_context(good), ECHO)
    assert status == 200 and body["client_cert"]["common_name"] == "reload-start-good"


def test_ca_removed_by_reload(proxies, pki, tmp_path):
    """A client CA removed from ``tls.client_ca`` by SIGHUP.

    New connections of that CA's clients are refused at the TLS handshake (unknown CA). Existing
    connections: each connection remembers the trust anchor its handshake chained to, and every
    request checks it against the CAs trusted now, so the next request on a connection opened
    before the reload gets 403 ``ca_not_trusted``; clients of the CAs still trusted are undisturbed.
    """
    ca2, ca2_pem = write_ca(tmp_path, "Reload Removed CA")
    dropped = pki.client("reload-removed-ca-client", issuer=ca2, subject={"CN": "reload-removed", "O": "Acme"})
    kept = pki.client("reload-kept-ca-client")
    proxy = proxies.start(tls={"client_ca": [str(pki.ca_pem), str(ca2_pem)]})
    dropped_ctx, kept_ctx = pki.client_context(dropped), pki.client_context(kept)
    dropped_conn, kept_conn = keepalive(proxy, dropped_ctx), keepalive(proxy, kept_ctx)
    assert get(dropped_conn, ECHO)[0] == 200
    assert get(kept_conn, ECHO)[0] == 200

    cfg = proxies.config()  # client_ca: the first CA only
    cfg["listen"] = f"127.0.0.1:{proxy.port}"
    proxy.write_config(cfg)
    proxy.reload()

    assert_refused(proxy, dropped_ctx, "unknown_ca")

    # the connection opened under the old trust is refused on its next request
    status, body = get(dropped_conn, f"{ECHO}?after=1")
    assert (status, body) == (403, {"error": "forbidden", "reason": "ca_not_trusted"})
    assert get(kept_conn, f"{ECHO}?after=1")[0] == 200
    assert proxy.get_json(kept_ctx, ECHO)[0] == 200
    dropped_conn.close()
    kept_conn.close()
