"""One device cannot freeze the proxy with a long path against a many-``**`` glob (issue 10, item 4).

The worst pattern of the report, ``/api/**/files/**/versions/**/delete``, against a 16 KiB path
that almost matches everywhere: under the former backtracking regexes this took seconds of CPU
in the one event loop, and every other client of the process waited. Now the path caps refuse it
up front (400), and with the caps raised past it the linear matcher answers (403) at once; in
both cases a second client's keep-alive requests keep their latency.
"""

from __future__ import annotations

import json
import statistics
import threading
import time

import pytest

from tests.support.tlsclient import raw_exchange, status_and_body

WORST = "/api/**/files/**/versions/**/delete"
POLICY = {
    "rules": [
        {"name": "no-version-deletes", "paths": [WORST], "action": "deny"},
        {"name": "echo", "paths": ["/api/echo"], "clients": "any"},
    ]
}


def attack_path(size: int) -> str:
    unit = "/files/versions"
    return "/api" + unit * (size // len(unit)) + "/x"  # every '**' has many places to try; none matches


@pytest.fixture(scope="module")
def started(tmp_path_factory, pki, upstream):
    from tests.support.proxy import ProxyFactory

    factory = ProxyFactory(tmp_path_factory.mktemp("glob-cost"), pki, upstream.url)
    yield factory, pki.client_context(pki.client("glob-attacker")), pki.client_context(pki.client("bystander"))
    factory.close()


def _attack(port: int, ctx, target: str) -> tuple[int, str, float]:
    req = f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    t0 = time.perf_counter()
    status, body = status_and_body(raw_exchange(port, ctx, req, timeout=30))
    return status, json.loads(body)["reason"], time.perf_counter() - t0


def _latencies(proxy, ctx, count: int) -> list[float]:
    conn = proxy.connection(ctx)
    out = []
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            conn.request("GET", "/api/echo")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            out.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return out


@pytest.mark.parametrize(("limits", "status", "reason"), [
    ({}, 400, "path_too_long"),  # the default caps: 8 KiB, 256 segments
    ({"max_path_length": "32k"}, 400, "too_many_segments"),
    ({"max_path_length": "32k", "max_path_segments": 4096}, 403, "no_matching_rule"),  # the matcher's work
])
def test_worst_glob_against_16k_path_answered_while_another_client_stays_fast(started, limits, status, reason):
    factory, attacker, bystander = started
    proxy = factory.start(policy=POLICY, limits={"max_head_size": "64k", **limits})
    target = attack_path(16 * 1024)
    assert 16 * 1024 <= len(target) < 16 * 1024 + 32

    _latencies(proxy, bystander, 20)  # warm up
    baseline = _latencies(proxy, bystander, 60)

    answers: list[tuple[int, str, float]] = []
    stop = threading.Event()

    def attack() -> None:
        while not stop.is_set():
            answers.append(_attack(proxy.port, attacker, target))

    thread = threading.Thread(target=attack)
    thread.start()
    try:
        time.sleep(0.2)
        during = _latencies(proxy, bystander, 60)
    finally:
        stop.set()
        thread.join(60)

    assert len(answers) >= 3
    assert {(s, r) for s, r, _ in answers} == {(status, reason)}
    # The backtracking regex took > 3 s per such request; the TLS handshake dominates now.
    assert max(t for _, _, t in answers) < 1.0, answers
    # the bystander shares the process (one worker, one event loop) with the attacker
    assert max(during) < 0.5, during
    assert statistics.median(during) < 3 * statistics.median(baseline) + 0.02, (baseline, during)
    proxy.wait_for_log(rf"cn=glob-attacker .* path=/api/files/versions\S* status={status} .* reason={reason}",
                       timeout=5)
