"""HTTP/2 abuse against the real proxy: malformed requests per stream, and the attack classes as raw frames.

Malformed requests (RFC 9113 8.1.1) are stream errors: RST_STREAM PROTOCOL_ERROR on that
stream, the connection goes on (a GET after it on the same connection answers 200) and
nothing reaches Django. What judge() decides is an HTTP answer as over HTTP/1.1 (400, 421).
The attacks (Rapid Reset, CONTINUATION flood, HPACK bomb, SETTINGS/PING/empty-frame floods,
too many streams, zero-window stalls) each end in a GOAWAY with the documented error code,
the log line ``http2 limit exceeded: <limit>`` and the metric.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path

import h2.events
import hpack
import httpx
import pytest
import yaml
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.hardening.wire import django_saw, new_marker
from tests.support.h2client import H2Client, RawH2

pytestmark = pytest.mark.timeout(120)

PROTOCOL_ERROR = 1
CANCEL = 8
ENHANCE_YOUR_CALM = 11


@pytest.fixture
def ctx(pki):  # type: ignore[no-untyped-def]
    return pki.client_context(pki.client("h2-attacker"))


def goaway_of(frames) -> GoAwayFrame:  # type: ignore[no-untyped-def]
    found = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert found, f"no GOAWAY in {frames!r}"
    return found[-1]


def metric(proxy, name: str, label: str) -> float:  # type: ignore[no-untyped-def]
    admin = yaml.safe_load(proxy.config_path.read_text())["admin"]["listen"]
    text = httpx.get(f"http://{admin}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def proxy_cpu_seconds(proxy) -> float:  # type: ignore[no-untyped-def]
    fields = Path(f"/proc/{proxy.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def request_block(encoder: hpack.Encoder, port: int, path: str = "/api/echo", method: str = "GET",
                  extra: list[tuple[str, str]] | None = None) -> bytes:
    return encoder.encode([(":method", method), (":scheme", "https"), (":authority", f"localhost:{port}"),
                           (":path", path), *(extra or [])])


# --- malformed requests: stream errors -----------------------------------------------------------------------

def _pseudo(port: int, *, method: bytes = b"GET", path: bytes | None = b"/api/echo",
            authority: bytes | None = None) -> list[tuple[bytes, bytes]]:
    out = [(b":method", method), (b":scheme", b"https"), (b":authority", authority or f"localhost:{port}".encode())]
    if path is not None:
        out.append((b":path", path))
    return out


MALFORMED = {
    "missing-path": lambda p, m: _pseudo(p, path=None),
    "missing-method": lambda p, m: _pseudo(p)[1:],
    "duplicate-path": lambda p, m: [*_pseudo(p, path=m), (b":path", b"/api/echo")],
    "duplicate-method": lambda p, m: [*_pseudo(p, path=m), (b":method", b"POST")],
    "pseudo-after-regular": lambda p, m: [*_pseudo(p, path=None), (b"accept", b"*/*"), (b":path", m)],
    "unknown-pseudo": lambda p, m: [*_pseudo(p, path=m), (b":protocol", b"websocket")],
    "uppercase-name": lambda p, m: [*_pseudo(p, path=m), (b"X-Upper", b"1")],
    "connection-header": lambda p, m: [*_pseudo(p, path=m), (b"connection", b"keep-alive")],
    "transfer-encoding": lambda p, m: [*_pseudo(p, path=m), (b"transfer-encoding", b"chunked")],
    "upgrade-header": lambda p, m: [*_pseudo(p, path=m), (b"upgrade", b"websocket")],
    "te-gzip": lambda p, m: [*_pseudo(p, path=m), (b"te", b"gzip")],
    "crlf-in-value": lambda p, m: [*_pseudo(p, path=m), (b"x-a", b"1\r\nx-client-cert-subject: CN=admin")],
    "crlf-in-path": lambda p, m: _pseudo(p, path=m + b"\r\nX-Injected: 1"),
    "empty-path": lambda p, m: _pseudo(p, path=b""),
    "space-in-query": lambda p, m: _pseudo(p, path=m + b"?a HTTP/1.0"),  # would split the HTTP/1.1 request line
    "space-in-method": lambda p, m: _pseudo(p, method=b"GET " + m + b" HTTP/1.1\x0bX:", path=m),
    "lowercase-ok-but-bad-method": lambda p, m: _pseudo(p, method=b"GE@T", path=m),
    "connect": lambda p, m: [(b":method", b"CONNECT"), (b":authority", b"example.com:443")],
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_is_a_stream_error(proxy, upstream, ctx, case):
    marker = new_marker()
    client = H2Client(proxy.port, ctx)
    try:
        sid = client.send_headers(MALFORMED[case](proxy.port, f"/api/probe/{marker}".encode()))
        bad = client.wait(sid)
        after = client.get("/api/echo")
    finally:
        client.close()
    assert bad.reset == PROTOCOL_ERROR and not bad.headers
    assert after.status == 200  # the connection and its other streams are unaffected
    assert django_saw(upstream, marker) == []
    proxy.wait_for_log(r"http2 stream reset: client=127\.0\.0\.1 cn=h2-attacker stream=1 reason=h2_")


JUDGED = [  # (case, headers, status, reason): decided by judge() exactly as for HTTP/1.1
    ("absolute-path", lambda p, m: _pseudo(p, path=b"https://localhost" + m), 400, "not_origin_form"),
    ("asterisk-path", lambda p, m: _pseudo(p, method=b"OPTIONS", path=b"*"), 400, "not_origin_form"),
    ("no-slash-path", lambda p, m: _pseudo(p, path=m[1:]), 400, "not_origin_form"),
    ("encoded-slash", lambda p, m: _pseudo(p, path=m + b"%2Fx"), 400, "encoded_separator"),
    ("host-differs", lambda p, m: [*_pseudo(p, path=m), (b"host", b"other.example")], 400, "multiple_host"),
    ("authority-not-sni", lambda p, m: _pseudo(p, path=m, authority=b"127.0.0.1"), 421, "host_sni_mismatch"),
    ("bad-authority", lambda p, m: _pseudo(p, path=m, authority=b"user@localhost"), 400, "bad_host"),
    ("no-authority-no-host", lambda p, m: [(b":method", b"GET"), (b":scheme", b"https"), (b":path", m)],
     400, "missing_host"),
    ("expect-other", lambda p, m: [*_pseudo(p, path=m), (b"expect", b"fancy")], 417, "expectation_failed"),
]


@pytest.mark.parametrize(("case", "build", "status", "reason"), JUDGED, ids=[j[0] for j in JUDGED])
def test_judged_refusals_are_http_answers(proxy, upstream, ctx, case, build, status, reason):
    marker = new_marker()
    client = H2Client(proxy.port, ctx)
    try:
        r = client.wait(client.send_headers(build(proxy.port, f"/api/probe/{marker}".encode())))
        after = client.get("/api/echo")
    finally:
        client.close()
    assert r.status == status
    assert json.loads(r.body)["reason"] == reason
    assert after.status == 200
    assert django_saw(upstream, marker) == []


def test_content_length_disagreeing_with_data_is_a_protocol_error(proxy, ctx):
    for sent in (b"12345", b"1234567890ab"):  # shorter, then longer than announced
        client = H2Client(proxy.port, ctx)
        try:
            sid = client.send_headers(client.headers_for("POST", "/api/upload", [(b"content-length", b"10")]),
                                      end=False)
            client.send_body(sid, sent)
            client.wait_for(lambda c=client: c.goaway is not None)
        finally:
            client.close()
        assert client.goaway.error_code == PROTOCOL_ERROR  # h2 makes it a connection error (RFC 9113 5.4.1 allows it)
        assert not client.streams[sid].headers
    proxy.wait_for_log(r"http2 connection error: .*cn=h2-attacker code=1 detail=InvalidBodyLengthError: "
                       r"Expected 10 bytes, received 5")
    proxy.wait_for_log(r"detail=InvalidBodyLengthError: Expected 10 bytes, received 12")


# --- attacks as raw frames -------------------------------------------------------------------------------------

def test_rapid_reset_ends_the_connection_and_others_stay_fast(proxies, pki, ctx):
    proxy = proxies.start()
    bystander = H2Client(proxy.port, pki.client_context(pki.client("h2-bystander")))
    latencies: list[float] = []
    stop = threading.Event()

    def measure() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            assert bystander.get("/api/echo").status == 200
            latencies.append(time.perf_counter() - t)

    for _ in range(20):
        measure_once = time.perf_counter()
        assert bystander.get("/api/echo").status == 200
        latencies.append(time.perf_counter() - measure_once)
    baseline = statistics.median(latencies)
    latencies.clear()
    thread = threading.Thread(target=measure, daemon=True)
    thread.start()
    cpu_before = proxy_cpu_seconds(proxy)
    attacker = RawH2(proxy.port, ctx)
    encoder = hpack.Encoder()
    frames = []
    for i in range(5000):
        sid = 1 + 2 * i
        frames += [HeadersFrame(sid, request_block(encoder, proxy.port), flags=["END_HEADERS", "END_STREAM"]),
                   RstStreamFrame(sid, error_code=CANCEL)]
    for start in range(0, len(frames), 200):
        attacker.send(*frames[start:start + 200])
        if attacker.closed:
            break
    got = attacker.read_until_closed()
    attacker.close()
    attack_cpu = proxy_cpu_seconds(proxy) - cpu_before
    time.sleep(1.0)
    stop.set()
    thread.join(10)
    bystander.close()
    goaway = goaway_of(got)
    assert goaway.error_code == ENHANCE_YOUR_CALM and goaway.additional_data == b"resets_per_second"
    proxy.wait_for_log(r"http2 limit exceeded: resets_per_second client=127\.0\.0\.1 cn=h2-attacker")
    assert metric(proxy, "mtls_proxy_http2_limit_exceeded_total", 'limit="resets_per_second"') == 1
    # at most the cap's worth of the attacker's streams reached Django (a reset in the same read never does)
    reached = sum(1 for line in proxy.logs if "cn=h2-attacker" in line and "access" in line)
    assert reached <= 101
    assert latencies, "the bystander made no request during the attack"
    assert statistics.median(latencies) < max(10 * baseline, 0.25), (baseline, latencies)
    assert attack_cpu < 2.0, attack_cpu  # bystander's requests included


def test_continuation_flood(proxy, ctx):
    attacker = RawH2(proxy.port, ctx)
    block = request_block(hpack.Encoder(), proxy.port)
    frames = [HeadersFrame(1, block[:1])]
    frames += [ContinuationFrame(1, block[1:2] if i == 0 else b"") for i in range(1000)]
    attacker.send(*frames)
    goaway = goaway_of(attacker.read_until_closed())
    attacker.close()
    assert goaway.error_code == ENHANCE_YOUR_CALM
    proxy.wait_for_log(r"http2 limit exceeded: continuation_frames client=127\.0\.0\.1 cn=h2-attacker")
    assert metric(proxy, "mtls_proxy_http2_limit_exceeded_total", 'limit="continuation_frames"') == 1


def test_continuation_within_the_cap_is_served(proxy, ctx):
    attacker = RawH2(proxy.port, ctx)
    block = request_block(hpack.Encoder(), proxy.port)
    pieces = [block[i:i + 4] for i in range(0, len(block), 4)]
    assert 1 < len(pieces) <= 17
    frames = [HeadersFrame(1, pieces[0], flags=["END_STREAM"])]
    frames += [ContinuationFrame(1, p, flags=["END_HEADERS"] if i == len(pieces) - 2 else []) for i, p in
               enumerate(pieces[1:])]
    attacker.send(*frames)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(isinstance(f, DataFrame) and "END_STREAM" in f.flags
                                                  for f in attacker.frames):
        attacker.read_until_closed(0.5)
    attacker.close()
    assert any(isinstance(f, HeadersFrame) and f.stream_id == 1 for f in attacker.frames)
    assert not any(isinstance(f, GoAwayFrame) for f in attacker.frames)


def test_hpack_bomb(proxy, ctx):
    """One 4 KiB header put in the dynamic table, then referenced by its 1-byte index 1000 times."""
    attacker = RawH2(proxy.port, ctx)
    encoder = hpack.Encoder()
    block = request_block(encoder, proxy.port, extra=[("x-bomb", "a" * 4000)] * 1000)
    assert len(block) < 16384  # the whole bomb fits one frame
    attacker.send(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]))
    goaway = goaway_of(attacker.read_until_closed())
    attacker.close()
    assert goaway.error_code == ENHANCE_YOUR_CALM
    proxy.wait_for_log(r"http2 limit exceeded: header_list_size client=127\.0\.0\.1 cn=h2-attacker")


def test_hpack_table_size_over_the_setting(proxy, ctx):
    attacker = RawH2(proxy.port, ctx)
    encoder = hpack.Encoder()
    encoder.header_table_size = 1 << 20  # a dynamic table size update to 1 MiB (we allow 4096)
    attacker.send(HeadersFrame(1, request_block(encoder, proxy.port), flags=["END_HEADERS", "END_STREAM"]))
    goaway = goaway_of(attacker.read_until_closed())
    attacker.close()
    assert goaway.error_code == PROTOCOL_ERROR  # h2 reports HPACK decoding failures as PROTOCOL_ERROR
    proxy.wait_for_log(r"http2 limit exceeded: header_table_size client=127\.0\.0\.1 cn=h2-attacker")


@pytest.mark.parametrize(("name", "frames", "limit"), [
    ("settings", lambda: [SettingsFrame(0) for _ in range(100)], "settings_per_second"),
    ("ping", lambda: [PingFrame(0, opaque_data=b"%08d" % i) for i in range(100)], "pings_per_second"),
    ("empty-data", lambda: [DataFrame(1, b"") for _ in range(500)], "empty_frames_per_second"),
    ("priority", lambda: [PriorityFrame(1 + 2 * i, depends_on=0, stream_weight=1) for i in range(500)],
     "empty_frames_per_second"),
])
def test_control_frame_floods(proxy, ctx, name, frames, limit):
    attacker = RawH2(proxy.port, ctx)
    opening = []
    if name == "empty-data":
        opening = [HeadersFrame(1, request_block(hpack.Encoder(), proxy.port, "/api/upload", "POST"),
                                flags=["END_HEADERS"])]
    attacker.send(*opening, *frames())
    goaway = goaway_of(attacker.read_until_closed())
    attacker.close()
    assert goaway.error_code == ENHANCE_YOUR_CALM and goaway.additional_data == limit.encode()
    proxy.wait_for_log(rf"http2 limit exceeded: {limit} client=127\.0\.0\.1 cn=h2-attacker")


def test_a_few_settings_and_pings_are_fine(proxy, ctx):
    client = H2Client(proxy.port, ctx)
    try:
        for i in range(5):
            client.conn.ping(b"%08d" % i)
            client.conn.update_settings({4: 65535 + i})
            client.flush()
        assert client.get("/api/echo").status == 200
    finally:
        client.close()
    assert client.goaway is None


def test_too_many_concurrent_streams(proxies, ctx):
    proxy = proxies.start(http2={"max_concurrent_streams": 3})
    client = H2Client(proxy.port, ctx)
    try:
        for _ in range(4):
            client.request("GET", "/api/slow?seconds=2")
        client.wait_for(lambda: client.goaway is not None)
    finally:
        client.close()
    assert client.goaway.error_code == PROTOCOL_ERROR
    proxy.wait_for_log(r"http2 limit exceeded: concurrent_streams client=127\.0\.0\.1 cn=h2-attacker")


def test_zero_window_stream_is_reset(proxies, ctx):
    """The client's stream window is 0 from the start: the response can never move; reset after the timeout."""
    proxy = proxies.start(http2={"zero_window_timeout": "1s"})
    client = H2Client(proxy.port, ctx, window=0)
    try:
        t = time.monotonic()
        r = client.wait(client.request("GET", "/api/download?size=100000&seed=z"), 15)
        elapsed = time.monotonic() - t
        after = client.get("/healthz")  # a 2-byte body needs a window too
    finally:
        client.close()
    assert r.status == 200 and r.reset == CANCEL and not r.body
    assert 1.0 <= elapsed < 5
    assert after.reset == CANCEL
    proxy.wait_for_log(r"http2 limit exceeded: zero_window client=127\.0\.0\.1 cn=h2-attacker")


def test_zero_connection_window_ends_the_connection(proxies, ctx):
    """The client never acknowledges anything: the connection window runs out, GOAWAY after the timeout."""
    proxy = proxies.start(http2={"zero_window_timeout": "1s"})
    client = H2Client(proxy.port, ctx, auto_ack=False, conn_window=0)
    try:
        client.request("GET", "/api/download?size=1000000&seed=z")
        client.wait_for(lambda: client.goaway is not None, 15)
    finally:
        client.close()
    assert client.goaway.error_code == ENHANCE_YOUR_CALM
    assert client.goaway.additional_data == b"zero_window"
    proxy.wait_for_log(r"http2 limit exceeded: zero_window client=127\.0\.0\.1 cn=h2-attacker")


def test_data_dribble_gets_no_tiny_frames(proxy, ctx):
    """A client opening its window 10 bytes at a time (CVE-2019-9511) gets no 10-byte DATA frames."""
    client = H2Client(proxy.port, ctx, window=0)
    try:
        sid = client.request("GET", "/api/download?size=100000&seed=dribble")
        client.wait_for(lambda: bool(client.streams[sid].headers))
        for _ in range(50):
            client.conn.increment_flow_control_window(10, stream_id=sid)
        client.flush()
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            client.read_some(0.1)
        assert client.streams[sid].body == b""  # 500 bytes of window: nothing sent yet
        client.conn.increment_flow_control_window(200_000, stream_id=sid)
        client.flush()
        r = client.wait(sid)
    finally:
        client.close()
    frames = [ev for ev in client.events if isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid and ev.data]
    assert len(r.body) == 100_000
    assert min(len(ev.data) for ev in frames[:-1]) >= 1024


def test_unfinished_header_block_times_out(proxies, ctx):
    """HEADERS without END_HEADERS and then one CONTINUATION now and then (slowloris): limits.head_timeout."""
    proxy = proxies.start(limits={"head_timeout": "1s"})
    attacker = RawH2(proxy.port, ctx)
    block = request_block(hpack.Encoder(), proxy.port)
    t = time.monotonic()
    attacker.send(HeadersFrame(1, block[:2]))
    time.sleep(0.5)
    attacker.send(ContinuationFrame(1, block[2:3]))  # activity, but the block never ends
    attacker.read_until_closed(10)
    attacker.close()
    assert attacker.closed and 1.0 <= time.monotonic() - t < 4
    proxy.wait_for_log(r"request head timeout from 127\.0\.0\.1 \(an HTTP/2 header block left unfinished\)")
