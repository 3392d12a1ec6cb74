"""What the proxy tells apps and operators about certificates: the renewal header, and a
handshake-failure flood that is counted in full but logged in bounded form."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import ssl
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.support.proxy import start_cli_proxy

CLOSE = {"Connection": "close"}


# --- Client-Cert-Renew-By ---------------------------------------------------------------------------------------


def test_renew_header_inside_the_window_only(proxies, pki):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    soon = pki.client("renew-soon", not_after=now + dt.timedelta(days=29, hours=23))
    edge_out = pki.client("renew-just-outside", not_after=now + dt.timedelta(days=30, hours=1))
    later = pki.client("renew-later", days=365)
    proxy = proxies.start(identity={"renew_window": "30d"})

    status, headers, _ = proxy.request(pki.client_context(soon), "GET", "/api/echo", headers=CLOSE)
    assert status == 200
    expected = soon.issued.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert headers["Client-Cert-Renew-By"] == expected
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", expected)
    assert dt.datetime.strptime(expected, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC) == now + dt.timedelta(
        days=29, hours=23)
    # on every response of the connection, keep-alive included
    conn = proxy.connection(pki.client_context(soon))
    for _ in range(2):
        conn.request("GET", "/api/echo")
        resp = conn.getresponse()
        resp.read()
        assert resp.getheader("Client-Cert-Renew-By") == expected
    conn.close()

    for outside in (edge_out, later):
        status, headers, _ = proxy.request(pki.client_context(outside), "GET", "/api/echo", headers=CLOSE)
        assert status == 200
        assert "Client-Cert-Renew-By" not in headers, (outside.name, headers)

    # without a window, never
    plain = proxies.start()
    status, headers, _ = plain.request(pki.client_context(soon), "GET", "/api/echo", headers=CLOSE)
    assert status == 200 and "Client-Cert-Renew-By" not in headers


# --- a flood of failed handshakes ----------------------------------------------------------------------------------

FLOOD = 1000
CONCURRENCY = 50
BURST, INTERVAL = 20, 10.0  # mtls_proxy.server.RateLimitedLog defaults


async def _flood(port: int, ctx: ssl.SSLContext) -> list[str]:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one() -> str:
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 20)
            except (ssl.SSLError, OSError) as exc:
                return type(exc).__name__
            try:
                # TLS 1.3: our side of the handshake is done; the server's verdict comes on the first read
                data = await asyncio.wait_for(reader.read(1), 20)
                return "eof" if not data else "data"
            except (ssl.SSLError, OSError) as exc:
                return type(exc).__name__
            finally:
                writer.close()

    return await asyncio.gather(*(one() for _ in range(FLOOD)))


def test_handshake_failure_flood_is_counted_in_full_and_logged_bounded(proxies, pki):
    cfg = proxies.config()
    proxy = start_cli_proxy(proxies, cfg)
    mark = proxy.log_count()
    t0 = time.monotonic()
    outcomes = asyncio.run(_flood(proxy.port, pki.client_context(None)))
    flood_seconds = time.monotonic() - t0
    assert "data" not in outcomes  # nobody got in
    assert len(outcomes) == FLOOD

    def metric() -> float:
        with urllib.request.urlopen(f"http://{cfg['admin']['listen']}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "mtls_proxy_tls_handshake_failures_total" and s.labels == {"reason": "no_client_cert"}:
                    return s.value
        return 0.0

    deadline = time.monotonic() + 10
    while metric() < FLOOD and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric() == FLOOD

    # the summary of what was not logged comes when the window closes, even with no later failure
    summary = proxy.wait_for_log(r"(\d+) similar log lines suppressed in the last 10s", INTERVAL + 5, start=mark)
    logs = proxy.logs[mark:]
    logged = [line for line in logs if "tls handshake failed: client=127.0.0.1 reason=no_client_cert" in line]
    suppressed = [int(m.group(1)) for line in logs if (m := re.search(r"(\d+) similar log lines suppressed", line))]
    windows = int(flood_seconds // INTERVAL) + 1
    assert len(logged) <= BURST * windows, (len(logged), flood_seconds)
    assert len(logged) == BURST * len(suppressed)  # every window that suppressed logged its full burst first
    assert len(logged) + sum(suppressed) == FLOOD, (len(logged), suppressed)
    assert summary.string.split(" ", 3)[2] == "WARNING"
    # a single failure after the window logs normally again
    mark = proxy.log_count()
    time.sleep(max(0.0, t0 + INTERVAL * windows - time.monotonic()))
    asyncio.run(_single(proxy.port, pki.client_context(None)))
    proxy.wait_for_log(r"tls handshake failed: client=127\.0\.0\.1 reason=no_client_cert", 5, start=mark)


async def _single(port: int, ctx: ssl.SSLContext) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
        await reader.read(1)
        writer.close()
    except (ssl.SSLError, OSError):
        pass
