"""HTTP/2 (ALPN h2) through real clients against the real proxy process and the real Django app.

curl (nghttp2) and httpx negotiate h2 with a client certificate; Python's h2 over ssl drives
streams one by one for what the others cannot show: 100 concurrent streams on one connection,
a refusal on one stream with the others unaffected, per-stream flow control (a stalled reader
stalls only its own stream), GOAWAY on a revoking reload and on drain. Bodies are 64 MiB
(sha256 compared) to keep the suite fast; tests/integration/test_streaming.py moves 1 GiB over
HTTP/1.1 through the same exchange core.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time

import httpx
import pytest

from mtls_proxy.demo_app.content import pattern_chunks, pattern_sha256
from tests.support.h2client import PREFACE, H2Client

pytestmark = pytest.mark.timeout(120)

MIB = 1 << 20
BIG = 64 * MIB
ECHO = "/api/echo"
REFUSED_STREAM = 7


def ctx_for(pki, name: str) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    return pki.client_context(pki.client(name))


def curl(pki, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", str(pki.server_ca_pem), *args],
                          capture_output=True, text=True, timeout=60)


# --- real clients ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(not shutil.which("curl"), reason="curl is installed by scripts/test.sh")
def test_curl_http2_with_client_cert(proxy, pki):
    c = pki.client("curl-h2")
    r = curl(pki, "--http2", "--cert", str(c.cert), "--key", str(c.key), "-w", "\n%{http_version} %{http_code}",
             f"https://localhost:{proxy.port}{ECHO}?via=curl-h2")
    body, _, tail = r.stdout.rpartition("\n")
    assert tail == "2 200", r.stderr
    seen = json.loads(body)
    assert seen["client_cert"]["common_name"] == "curl-h2"
    assert seen["query_string"] == "via=curl-h2"
    assert seen["headers"]["HTTP_HOST"] == f"localhost:{proxy.port}"  # :authority in the role of Host
    line = proxy.wait_for_log(r"access .*cn=curl-h2 .*protocol=h2").group(0)
    assert "status=200" in line


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is installed by scripts/test.sh")
def test_curl_http2_prior_knowledge_is_refused_cleanly(proxy, pki):
    """h2c (HTTP/2 in clear text, prior knowledge) on the TLS port: the handshake fails, nothing is served."""
    c = pki.client("curl-h2c")
    mark = proxy.log_count()
    r = curl(pki, "--http2-prior-knowledge", "--cert", str(c.cert), "--key", str(c.key),
             f"http://localhost:{proxy.port}{ECHO}")
    assert r.returncode == 18, r  # "stream 1 was not closed cleanly": the proxy closed without a byte of HTTP/2
    assert r.stdout == ""
    proxy.wait_for_log(r"tls handshake failed: .*reason=protocol_version .*WRONG_VERSION_NUMBER", start=mark)


def test_http2_preface_without_alpn_is_an_http1_request_refused(proxy, pki):
    """Prior knowledge over TLS without ALPN h2: the connection is HTTP/1.1, where 'PRI * HTTP/2.0' is refused
    by llhttp (a PRI request line is not a request) before any version check: 400 and close."""
    ctx = ctx_for(pki, "no-alpn")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.selected_alpn_protocol() is None
        tls.sendall(PREFACE)
        reply = b""
        while chunk := tls.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert reply.endswith(b'{"error": "bad request", "reason": "bad_request"}')


def test_httpx_http2_with_client_cert(proxy, pki):
    c = pki.client("httpx-h2")
    ctx = ssl.create_default_context(cafile=str(pki.server_ca_pem))
    ctx.load_cert_chain(str(c.cert), str(c.key))
    with httpx.Client(http2=True, verify=ctx, timeout=20) as client:
        r = client.get(f"https://localhost:{proxy.port}/api/whoami")
        r2 = client.post(f"https://localhost:{proxy.port}/api/upload", content=b"z" * 100_000)
    assert r.http_version == "HTTP/2"
    assert r.status_code == 200, r.text
    assert "httpx-h2" in r.text
    assert r2.json() == {"sha256": hashlib.sha256(b"z" * 100_000).hexdigest(), "length": 100_000}


def test_alpn_http1_only_config_serves_http1(proxies, pki):
    proxy = proxies.start(tls={"alpn": ["http/1.1"]})
    ctx = ctx_for(pki, "alpn-h1")
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"


# --- streams -----------------------------------------------------------------------------------------------

def test_100_concurrent_streams_on_one_connection(proxy, pki):
    client = H2Client(proxy.port, ctx_for(pki, "h2-many"))
    try:
        sids = [client.request("GET", f"{ECHO}?i={i}") for i in range(100)]
        client.wait_for(lambda: all(client.streams[s].done for s in sids), 60)
        seen = [json.loads(client.streams[s].body) for s in sids]
    finally:
        client.close()
    assert [client.streams[s].status for s in sids] == [200] * 100
    assert [s["query_string"] for s in seen] == [f"i={i}" for i in range(100)]
    assert {s["client_cert"]["common_name"] for s in seen} == {"h2-many"}
    assert all(s["headers"]["HTTP_X_CLIENT_CERT_SIGNATURE"].startswith("v2;") for s in seen)


def test_spoofed_identity_headers_are_stripped(proxy, pki):
    client = H2Client(proxy.port, ctx_for(pki, "h2-spoof"))
    try:
        r = client.wait(client.request("GET", ECHO, [(b"x-client-cert-subject", b"CN=admin"),
                                                     (b"x_client_cert_fingerprint", b"00"),
                                                     (b"x-forwarded-for", b"10.0.0.1")]))
    finally:
        client.close()
    seen = json.loads(r.body)
    assert seen["headers"]["HTTP_X_CLIENT_CERT_SUBJECT"] == "O%3DAcme%2CCN%3Dh2-spoof"
    assert seen["headers"]["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert seen["client_cert"]["common_name"] == "h2-spoof"


def test_policy_refusal_on_one_stream_leaves_the_others_alone(proxies, pki):
    proxy = proxies.start(policy={"rules": [
        {"name": "no-admin", "paths": ["/admin/**"], "action": "deny"},
        {"name": "api", "paths": ["/api/**"], "clients": "any"},
    ]})
    client = H2Client(proxy.port, ctx_for(pki, "h2-policy"))
    try:
        sids = [client.request("GET", "/api/slow?seconds=0.5"), client.request("GET", "/admin/users"),
                client.request("GET", f"{ECHO}?x=1"), client.request("GET", "/admin/../admin/x")]
        client.wait_for(lambda: all(client.streams[s].done for s in sids))
        again = client.get(f"{ECHO}?after=1")
    finally:
        client.close()
    statuses = [client.streams[s].status for s in sids]
    assert statuses == [200, 403, 200, 403]
    assert json.loads(client.streams[sids[1]].body) == {"error": "forbidden", "reason": "denied_by_rule"}
    assert again.status == 200
    proxy.wait_for_log(r"denied: cn=h2-policy .* GET /admin/users rule=no-admin reason=denied_by_rule")


def test_large_upload_and_download_sha256(proxies, pki):
    proxy = proxies.start(limits={"max_body_size": "128M"})
    client = H2Client(proxy.port, ctx_for(pki, "h2-big"), timeout=60)
    try:
        digest = hashlib.sha256()
        sid = client.send_headers(client.headers_for("POST", "/api/upload", [(b"content-length", str(BIG).encode())]),
                                  end=False)
        for piece in pattern_chunks(BIG, "h2-up"):
            digest.update(piece)
            client.send_body(sid, piece, end=False)
        client.conn.end_stream(sid)
        client.flush()
        up = client.wait(sid, 60)
        down = client.get(f"/api/download-chunked?size={BIG}&seed=h2-down", 60)
    finally:
        client.close()
    assert json.loads(up.body) == {"sha256": digest.hexdigest(), "length": BIG}
    assert down.status == 200 and down.header(b"content-length") is None
    assert hashlib.sha256(down.body).hexdigest() == pattern_sha256(BIG, "h2-down")


def test_a_stalled_reader_stalls_only_its_own_stream(proxy, pki):
    """Stream A's window is never reopened; stream B on the same connection downloads 16 MiB meanwhile."""
    client = H2Client(proxy.port, ctx_for(pki, "h2-flow"))
    try:
        a = client.request("GET", f"/api/download?size={16 * MIB}&seed=a")
        client.hold.add(a)
        b = client.request("GET", f"/api/download?size={16 * MIB}&seed=b")
        client.wait(b, 60)
        stalled = len(client.streams[a].body)
        client.hold.discard(a)
        client.conn.acknowledge_received_data(stalled, a)  # reopen A: it completes too
        client.flush()
        client.wait(a, 60)
    finally:
        client.close()
    assert hashlib.sha256(client.streams[b].body).hexdigest() == pattern_sha256(16 * MIB, "b")
    assert stalled <= 65535  # the client's initial window: nothing more was sent while it was closed
    assert hashlib.sha256(client.streams[a].body).hexdigest() == pattern_sha256(16 * MIB, "a")


class StallingUpstream:
    """A tiny HTTP/1.1 upstream: ``/stall`` is never read past its head (a Django that does not read an
    upload); anything else is answered 200 at once. Django's own ASGI handler reads whole bodies first,
    so it cannot play the slow reader."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(1)
            if not chunk:
                return
            head += chunk
        if head.startswith(b"POST /stall"):
            self.held.append(conn)  # never read again
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


def test_a_slow_upstream_reader_stalls_only_its_own_upload(proxies, pki):
    """The upstream does not read an upload: the proxy stops acknowledging that stream's DATA (its
    window stays closed), while another stream on the same connection is answered at once."""
    stalling = StallingUpstream()
    proxy = proxies.start(upstream=f"http://127.0.0.1:{stalling.port}", limits={"max_body_size": "1G"})
    client = H2Client(proxy.port, ctx_for(pki, "h2-slow-up"))
    total = 512 * MIB
    try:
        up = client.send_headers(client.headers_for("POST", "/stall", [(b"content-length", str(total).encode())]),
                                 end=False)
        piece = b"u" * 16384
        sent = 0
        quiet_since = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            room = min(client.conn.local_flow_control_window(up), len(piece))
            if room > 0:
                client.conn.send_data(up, piece[:room])
                sent += room
                client.flush()
                quiet_since = None
                continue
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 2.0:
                break  # no WINDOW_UPDATE for 2 s: stalled
            client.read_some(0.2)
        window = client.conn.local_flow_control_window(up)
        t = time.monotonic()
        other = client.get("/other")
        other_took = time.monotonic() - t
    finally:
        client.close()
        stalling.close()
    assert window <= 0 and 0 < sent < total, (window, sent)
    assert other.status == 200 and bytes(other.body) == b"ok" and other_took < 1.0


def test_head_and_repeated_response_fields(proxy, pki):
    client = H2Client(proxy.port, ctx_for(pki, "h2-head"))
    try:
        head = client.wait(client.request("HEAD", "/api/download?size=1000&seed=h"))
        cookies = client.get("/api/set-cookies")
    finally:
        client.close()
    assert head.status == 200 and head.header(b"content-length") == b"1000" and head.body == b"" and head.ended
    assert next(v for n, v in cookies.headers if n == b"set-cookie").startswith(b"a=1")
    assert len([v for n, v in cookies.headers if n == b"set-cookie"]) == 2
    assert all(n == n.lower() for n, _ in cookies.headers)


def test_expect_100_continue(proxy, pki):
    client = H2Client(proxy.port, ctx_for(pki, "h2-expect"))
    try:
        sid = client.send_headers(client.headers_for("POST", "/api/upload", [(b"expect", b"100-continue"),
                                                                             (b"content-length", b"3")]), end=False)
        client.wait_for(lambda: bool(client.streams[sid].informational))
        client.send_body(sid, b"abc")
        r = client.wait(sid)
    finally:
        client.close()
    assert client.streams[sid].informational[0] == [(b":status", b"100")]
    assert json.loads(r.body)["length"] == 3


def test_body_over_the_limit_while_streaming_is_413(proxies, pki):
    proxy = proxies.start(limits={"max_body_size": "1M"})
    client = H2Client(proxy.port, ctx_for(pki, "h2-413"))
    try:
        sid = client.send_headers(client.headers_for("POST", "/api/upload"), end=False)  # no content-length
        client.send_body(sid, b"b" * (2 * MIB))
        r = client.wait(sid)
        after = client.get(ECHO)
    finally:
        client.close()
    assert r.status == 413 and json.loads(r.body) == {"error": "request entity too large", "reason": "body_too_large"}
    assert after.status == 200


def test_silent_request_body_times_out_on_its_stream_only(proxies, pki):
    proxy = proxies.start(limits={"body_timeout": "1s"})
    client = H2Client(proxy.port, ctx_for(pki, "h2-body-timeout"))
    try:
        sid = client.send_headers(client.headers_for("POST", "/api/upload", [(b"content-length", b"10")]), end=False)
        client.send_body(sid, b"12345", end=False)  # and then nothing
        t = time.monotonic()
        r = client.wait(sid, 10)
        took = time.monotonic() - t
        after = client.get(ECHO)
    finally:
        client.close()
    # the status is the outcome table's for client_body_timeout (408), as over HTTP/1.1
    assert (r.status, json.loads(r.body)["reason"]) == (408, "client_body_timeout")
    assert 0.9 <= took < 4 and after.status == 200
    proxy.wait_for_log(r"client body timeout from 127\.0\.0\.1 \(stream 1\)")


# --- connection-level rules ----------------------------------------------------------------------------------

def test_idle_connection_gets_goaway_and_is_closed(proxies, pki):
    proxy = proxies.start(limits={"idle_timeout": "1s"})
    client = H2Client(proxy.port, ctx_for(pki, "h2-idle"))
    try:
        assert client.get(ECHO).status == 200
        t = time.monotonic()
        client.wait_for(lambda: client.goaway is not None, 10)
        client.wait_closed(5)
    finally:
        client.close()
    assert client.goaway.error_code == 0 and 0.9 <= time.monotonic() - t < 4


def test_a_client_that_stops_reading_is_cut_off(proxies, pki):
    proxy = proxies.start(limits={"send_timeout": "1s"})
    # windows wide open (so flow control is not what stops the response): TCP fills up instead
    client = H2Client(proxy.port, ctx_for(pki, "h2-deaf"), window=2**31 - 1, conn_window=2**31 - 65536)
    mark = proxy.log_count()
    try:
        client.request("GET", f"/api/download?size={256 * MIB}&seed=deaf")  # and never read a byte
        proxy.wait_for_log(r"send timeout: client 127\.0\.0\.1 took no bytes for 1s", 30, start=mark)
        line = proxy.wait_for_log(r"access .*cn=h2-deaf .*status=200.*", 10, start=mark).group(0)
    finally:
        client.close()
    assert "reason=send_timeout" in line and "protocol=h2" in line



def test_revoking_reload_sends_goaway_and_403_on_new_streams(proxies, pki):
    victim = pki.client("h2-victim")
    proxy = proxies.start(tls={"crl": str(pki.crl("h2-clean.pem", []))})
    client = H2Client(proxy.port, pki.client_context(victim))
    try:
        assert client.get(ECHO).status == 200
        slow = client.request("GET", "/api/slow?seconds=2")
        time.sleep(0.3)
        cfg = proxies.config(tls={"crl": str(pki.crl("h2-revoked.pem", [victim]))})
        cfg["listen"] = f"127.0.0.1:{proxy.port}"
        proxy.write_config(cfg)
        proxy.reload()
        client.wait_for(lambda: client.goaway is not None, 10)
        assert client.goaway.error_code == 0  # NO_ERROR: open streams finish
        assert client.goaway.last_stream_id == slow
        late = client.send_headers(client.headers_for("GET", ECHO), sid=slow + 2)  # raced the GOAWAY
        client.wait_for(lambda: client.streams[slow].done and client.streams[late].done, 10)
        assert client.streams[slow].status == 200  # judged before the reload: it completes
        assert client.streams[late].status == 403
        assert json.loads(client.streams[late].body) == {"error": "forbidden", "reason": "revoked"}
        client.wait_closed(10)  # nothing open any more: the proxy closes
    finally:
        client.close()


def test_sigterm_sends_goaway_and_lets_open_streams_finish(proxies, pki):
    proxy = proxies.start()
    client = H2Client(proxy.port, ctx_for(pki, "h2-drain"))
    try:
        slow = client.request("GET", "/api/slow?seconds=1.5")
        time.sleep(0.3)
        proxy.terminate()
        client.wait_for(lambda: client.goaway is not None, 10)
        assert client.goaway.error_code == 0 and client.goaway.last_stream_id == slow
        late = client.send_headers(client.headers_for("GET", ECHO), sid=slow + 2)
        client.wait_for(lambda: client.streams[slow].done and client.streams[late].done, 10)
        assert client.streams[slow].status == 200
        assert client.streams[late].reset == REFUSED_STREAM  # never processed: safe to retry elsewhere
    finally:
        client.close()
    assert proxy.wait(30) == 0


def test_metrics_count_http2_requests_by_protocol(proxy, pki):
    client = H2Client(proxy.port, ctx_for(pki, "h2-metrics"))
    try:
        assert client.get(ECHO).status == 200
    finally:
        client.close()
    admin = proxy_admin(proxy)
    text = httpx.get(f"http://{admin}/metrics", timeout=10).text
    assert any(line.startswith("mtls_proxy_requests_total{") and 'protocol="h2"' in line
               for line in text.splitlines()), text


def proxy_admin(proxy) -> str:  # type: ignore[no-untyped-def]
    import yaml

    return str(yaml.safe_load(proxy.config_path.read_text())["admin"]["listen"])


def test_client_goaway_closes_the_connection(proxy, pki):
    """After the client's GOAWAY h2 sends nothing more: the open stream is abandoned (499) and the connection closed."""
    client = H2Client(proxy.port, ctx_for(pki, "h2-bye"))
    try:
        client.request("GET", "/api/slow?seconds=3")
        time.sleep(0.3)
        client.conn.close_connection()
        client.flush()
        t = time.monotonic()
        client.wait_closed(5)
    finally:
        client.close()
    assert time.monotonic() - t < 2
    proxy.wait_for_log(r"http2 GOAWAY from client=127\.0\.0\.1 cn=h2-bye code=0 open_streams=1")
    proxy.wait_for_log(r"access .*cn=h2-bye .*status=499 .*reason=client_closed protocol=h2")
