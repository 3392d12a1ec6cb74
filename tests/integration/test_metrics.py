"""The admin listener against a scripted scenario: every counter equals what the scenario did.

Run single-process and with ``--workers 2`` (prometheus-client's multiprocess mode sums the
workers' values on the parent's /metrics; the scenario's connections land on both workers).
/metrics is parsed with prometheus-client's own parser; /readyz follows the upstream; /healthz.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.support.proxy import CliProxyProcess, ProxyFactory, free_port, start_cli_proxy
from tests.support.tlsclient import outcome

CLOSE = {"Connection": "close"}
N_OK, N_DENIED_RULE, N_NOT_ALLOWED, N_NO_RULE, K_NO_CERT = 20, 3, 2, 1, 5


def admin_get(proxy: CliProxyProcess, cfg: dict[str, Any], path: str) -> tuple[int, str, bytes]:
    url = f"http://{cfg['admin']['listen']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def scrape(proxy: CliProxyProcess, cfg: dict[str, Any]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """sample name -> [(labels, value)], parsed by prometheus-client's parser."""
    status, ctype, body = admin_get(proxy, cfg, "/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[s.name].append((dict(s.labels), s.value))
    return out


def by_label(samples: list[tuple[dict[str, str], float]], label: str) -> dict[str, float]:
    """Sum a sample's values grouped by one label (other labels summed over)."""
    out: dict[str, float] = defaultdict(float)
    for labels, value in samples:
        out[labels[label]] += value
    return dict(out)


def start(proxies: ProxyFactory, cfg: dict[str, Any], mode: str) -> CliProxyProcess:
    if mode == "workers":
        return start_cli_proxy(proxies, cfg, ("--workers", "2", "--log-format", "json"),
                               (r"worker 0 ready", r"worker 1 ready"))
    return start_cli_proxy(proxies, cfg, ("--log-format", "json"))


@pytest.mark.parametrize("mode", ["single", "workers"])
def test_counters_and_expiry_gauges_equal_the_scenario(proxies, pki, mode):
    crl = pki.crl("metrics-crl.pem", [])
    cfg = proxies.config(
        tls={"crl": str(crl)},
        limits={"upstream_read_timeout": "500ms"},
        policy={"rules": [
            {"name": "no-admin", "paths": ["/admin/"], "action": "deny"},
            {"name": "ops", "paths": ["/ops/"], "clients": [{"subject": {"CN": "ops-*"}}]},
            {"name": "api", "paths": ["/api/"], "clients": "any"},
        ]},
    )
    proxy = start(proxies, cfg, mode)
    ctx = pki.client_context(pki.client("metrics-device"))

    # the scenario: one new connection per request
    expected_status: dict[str, int] = {"200": N_OK, "403": N_DENIED_RULE + N_NOT_ALLOWED + N_NO_RULE, "504": 1}
    for i in range(N_OK):
        assert proxy.request(ctx, "GET", f"/api/echo?i={i}", headers=CLOSE)[0] == 200
    for _ in range(N_DENIED_RULE):
        assert proxy.request(ctx, "GET", "/admin/users", headers=CLOSE)[0] == 403
    for _ in range(N_NOT_ALLOWED):
        assert proxy.request(ctx, "POST", "/ops/restart", body=b"x", headers=CLOSE)[0] == 403
    for _ in range(N_NO_RULE):
        assert proxy.request(ctx, "GET", "/elsewhere", headers=CLOSE)[0] == 403
    t0 = time.monotonic()
    status, _, body = proxy.request(ctx, "GET", "/api/slow?seconds=3", headers=CLOSE)
    assert (status, json.loads(body)["reason"]) == (504, "upstream_timeout") and time.monotonic() - t0 < 2
    no_cert = pki.client_context(None)
    for _ in range(K_NO_CERT):
        assert outcome(proxy.port, no_cert).startswith("tls:")
    # one good reload (counted once, by the parent in worker mode), one failed one
    mark = proxy.log_count()
    proxy.process.send_signal(signal.SIGHUP)
    for _ in range(2 if mode == "workers" else 1):  # each worker's own "reloaded" line
        mark = proxy.logs.index(proxy.wait_for_log(r"reloaded: generation", 10, start=mark).string) + 1
    proxy.write_config(dict(cfg, upstream=42))
    proxy.reload(expect_ok=False)
    n_requests = sum(expected_status.values())

    if mode == "workers":  # the scenario really was split between the two processes
        served = {json.loads(line)["worker"] for line in proxy.logs
                  if '"logger":"mtls_proxy.access"' in line}
        assert served == {0, 1}

    # every counter equals the scenario's figure (whole label sets: nothing else was counted)
    deadline = time.monotonic() + 5
    while True:
        m = scrape(proxy, cfg)
        failures = by_label(m["mtls_proxy_tls_handshake_failures_total"], "reason")
        if failures.get("no_client_cert", 0) >= K_NO_CERT or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert by_label(m["mtls_proxy_requests_total"], "status") == expected_status
    assert by_label(m["mtls_proxy_requests_total"], "rule") == {
        "api": N_OK + 1, "no-admin": N_DENIED_RULE, "ops": N_NOT_ALLOWED, "-": N_NO_RULE}
    assert by_label(m["mtls_proxy_requests_total"], "method") == {"GET": n_requests - N_NOT_ALLOWED,
                                                                  "POST": N_NOT_ALLOWED}
    assert by_label(m["mtls_proxy_policy_denials_total"], "reason") == {
        "denied_by_rule": N_DENIED_RULE, "client_not_allowed": N_NOT_ALLOWED, "no_matching_rule": N_NO_RULE}
    assert failures == {"no_client_cert": K_NO_CERT}
    assert by_label(m["mtls_proxy_upstream_errors_total"], "kind") == {"timeout": 1}
    assert by_label(m["mtls_proxy_reloads_total"], "result") == {"ok": 1, "failed": 1}
    assert m["mtls_proxy_tls_handshakes_total"] == [({}, n_requests)]
    assert m["mtls_proxy_request_duration_seconds_count"] == [({}, n_requests)]
    assert m["mtls_proxy_client_cert_remaining_lifetime_seconds_count"] == [({}, n_requests)]

    # expiry gauges: the dates in the files
    server = x509.load_pem_x509_certificate(pki.server_pem.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_pem.read_bytes())
    crl_obj = x509.load_pem_x509_crl(crl.read_bytes())
    assert m["mtls_proxy_server_cert_expiry_timestamp_seconds"] == [({}, server.not_valid_after_utc.timestamp())]
    assert m["mtls_proxy_client_ca_expiry_timestamp_seconds"] == [
        ({"subject": "O=Acme,CN=Test Client CA"}, ca.not_valid_after_utc.timestamp())]
    assert crl_obj.next_update_utc is not None
    assert m["mtls_proxy_crl_next_update_timestamp_seconds"] == [
        ({"crl": str(crl)}, crl_obj.next_update_utc.timestamp())]
    # and they still parse as the types the exposition format declares
    status, _, body = admin_get(proxy, cfg, "/metrics")
    types = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    assert types["mtls_proxy_requests"] == "counter"
    assert types["mtls_proxy_request_duration_seconds"] == "histogram"
    assert types["mtls_proxy_server_cert_expiry_timestamp_seconds"] == "gauge"
    proxy.terminate()
    assert proxy.wait(15) == 0


@pytest.mark.parametrize("mode", ["single", "workers"])
def test_readyz_follows_the_upstream_and_healthz_answers(proxies, pki, mode):
    """An upstream nobody listens on: 503 naming the failed check; something listens: 200."""
    up_port = free_port()
    cfg = proxies.config(upstream=f"http://127.0.0.1:{up_port}")
    proxy = start(proxies, cfg, mode)
    assert admin_get(proxy, cfg, "/healthz")[::2] == (200, b"ok\n")
    status, ctype, body = admin_get(proxy, cfg, "/readyz")
    other = "workers" if mode == "workers" else "listening"
    assert (status, ctype) == (503, "application/json; charset=utf-8")
    assert json.loads(body) == {"ready": False, "checks": {"config_loaded": True, other: True, "upstream": False}}
    ctx = pki.client_context(pki.client("readyz-device"))
    assert proxy.request(ctx, "GET", "/api/echo", headers=CLOSE)[0] == 502

    listener = socket.create_server(("127.0.0.1", up_port))
    try:
        status, _, body = admin_get(proxy, cfg, "/readyz")
        assert status == 200
        assert json.loads(body) == {"ready": True, "checks": {"config_loaded": True, other: True, "upstream": True}}
    finally:
        listener.close()
    assert admin_get(proxy, cfg, "/readyz")[0] == 503
    assert admin_get(proxy, cfg, "/healthz")[0] == 200
    proxy.terminate()
    assert proxy.wait(15) == 0


def test_readyz_200_with_the_real_upstream(proxies, pki):
    cfg = proxies.config()
    proxy = start(proxies, cfg, "single")
    status, _, body = admin_get(proxy, cfg, "/readyz")
    assert (status, json.loads(body)) == (200, {"ready": True, "checks": {
        "config_loaded": True, "listening": True, "upstream": True}})


def test_expiry_gauges_follow_a_new_crl_after_a_worker_died(proxies, pki):
    """Worker mode: a worker killed earlier must not pin the gauges to the dates it last saw.

    The CRL is re-issued (nextUpdate moves later, as every CRL refresh does) after worker 1 was
    replaced: /metrics must show the new nextUpdate, not the minimum over dead processes' files.
    """
    crl = pki.crl("metrics-rolling-crl.pem", [], days=2)
    cfg = proxies.config(tls={"crl": str(crl)})
    proxy = start(proxies, cfg, "workers")
    victim = int(proxy.wait_for_log(r"worker 1 ready \(pid (\d+)\)").group(1))
    mark = proxy.log_count()
    os.kill(victim, signal.SIGKILL)
    proxy.wait_for_log(r"worker 1 ready \(pid \d+\)", 15, start=mark)

    pki.crl("metrics-rolling-crl.pem", [], days=9)  # the refreshed CRL, same path
    new_next = x509.load_pem_x509_crl(crl.read_bytes()).next_update_utc
    assert new_next is not None
    mark = proxy.log_count()
    proxy.process.send_signal(signal.SIGHUP)
    proxy.wait_for_log(r"reloaded: generation", 10, start=mark)
    deadline = time.monotonic() + 5
    while len(re.findall(r"reloaded: generation", "\n".join(proxy.logs[mark:]))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    m = scrape(proxy, cfg)
    assert m["mtls_proxy_crl_next_update_timestamp_seconds"] == [({"crl": str(crl)}, new_next.timestamp())]
