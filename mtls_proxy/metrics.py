"""Prometheus metrics (prometheus-client, multiprocess mode so N workers add up on one /metrics).

The request path touches only pre-resolved label children cached in dicts: a few
dict look-ups and mmap increments per request. ``PROMETHEUS_MULTIPROC_DIR`` must be
set before this module is imported (the CLI does it); without it, values live in
this process only, which is what unit tests use.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as _mp

if TYPE_CHECKING:
    from mtls_proxy.state import RuntimeState

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_DAY = 86400.0
_LIFETIME_BUCKETS = tuple(d * _DAY for d in (1, 3, 7, 14, 30, 60, 90, 180, 365, 730))

REQUESTS = Counter("mtls_proxy_requests", "Requests answered, by method, policy rule, status and protocol",
                   ["method", "rule", "status", "protocol"])
REQUEST_SECONDS = Histogram("mtls_proxy_request_duration_seconds", "Request duration (head to last byte)",
                            buckets=_LATENCY_BUCKETS)
UPSTREAM_SECONDS = Histogram("mtls_proxy_upstream_duration_seconds", "Time to the upstream response head",
                             buckets=_LATENCY_BUCKETS)
BYTES_IN = Counter("mtls_proxy_request_bytes", "Bytes received from clients (heads and bodies)")
BYTES_OUT = Counter("mtls_proxy_response_bytes", "Bytes sent to clients (heads and bodies)")
CONNECTIONS = Gauge("mtls_proxy_active_connections", "Open client TLS connections", multiprocess_mode="livesum")
HANDSHAKES = Counter("mtls_proxy_tls_handshakes", "TLS handshakes completed")
HANDSHAKE_FAILURES = Counter("mtls_proxy_tls_handshake_failures", "TLS handshakes failed, by reason", ["reason"])
DENIALS = Counter("mtls_proxy_policy_denials", "Requests refused by policy or validation, by reason", ["reason"])
UPSTREAM_ERRORS = Counter("mtls_proxy_upstream_errors", "Upstream failures, by kind (connect, timeout, reset)",
                          ["kind"])
HANDSHAKES_IN_PROGRESS = Gauge("mtls_proxy_tls_handshakes_in_progress", "TLS handshakes under way",
                               multiprocess_mode="livesum")
HANDSHAKES_REJECTED = Counter("mtls_proxy_connections_refused_before_handshake",
                              "New sockets closed at once because the handshake budget was used up, by reason",
                              ["reason"])
CRL_FETCH_FAILURES = Counter("mtls_proxy_crl_fetch_failures", "Failed fetches of a CRL URL", ["url"])
CRL_FETCHED = Gauge("mtls_proxy_crl_last_fetch_timestamp_seconds", "Last successful fetch of a CRL URL", ["url"],
                    multiprocess_mode="max")
TUNNEL_CLOSES = Counter("mtls_proxy_tunnel_closes", "WebSocket tunnels closed, by cause", ["cause"])
HTTP2_LIMITS = Counter("mtls_proxy_http2_limit_exceeded",
                       "HTTP/2 connections ended (GOAWAY) or streams reset for exceeding a limit, by limit",
                       ["limit"])
REJUDGED = Counter("mtls_proxy_connections_refused_on_rejudge",
                   "Open connections whose client a reload or an expiry made refused, by reason", ["reason"])
RELOADS = Counter("mtls_proxy_reloads", "Configuration reloads, by result", ["result"])
LAST_RELOAD = Gauge("mtls_proxy_last_successful_reload_timestamp_seconds", "When the current state was loaded",
                    multiprocess_mode="max")
# "livemin": over live processes only; a dead worker's file would otherwise pin the dates it last saw
SERVER_CERT_EXPIRY = Gauge("mtls_proxy_server_cert_expiry_timestamp_seconds", "notAfter of the server certificate",
                           multiprocess_mode="livemin")
CLIENT_CA_EXPIRY = Gauge("mtls_proxy_client_ca_expiry_timestamp_seconds", "notAfter of each client CA",
                         ["subject"], multiprocess_mode="livemin")
CRL_NEXT_UPDATE = Gauge("mtls_proxy_crl_next_update_timestamp_seconds", "nextUpdate of each configured CRL",
                        ["crl"], multiprocess_mode="livemin")
CLIENT_CERT_REMAINING = Histogram("mtls_proxy_client_cert_remaining_lifetime_seconds",
                                  "Remaining lifetime of client certificates, once per connection",
                                  buckets=_LIFETIME_BUCKETS)

_request_children: dict[tuple[bytes, str, int, str], Counter] = {}
_denial_children: dict[str, Counter] = {}
_failure_children: dict[str, Counter] = {}
_upstream_children: dict[str, Counter] = {}

#: upstream error reason codes -> the ``kind`` label
UPSTREAM_KINDS = {
    "upstream_connect_failed": "connect",
    "upstream_connect_timeout": "timeout",
    "upstream_timeout": "timeout",
    "upstream_reset": "reset",
    "upstream_bad_response": "reset",
}


def observe_request(method: bytes, rule: str, status: int, seconds: float, upstream_seconds: float,
                    bytes_in: int, bytes_out: int, protocol: str) -> None:
    key = (method, rule, status, protocol)
    child = _request_children.get(key)
    if child is None:
        m = method.decode("ascii", "replace")
        child = REQUESTS.labels(m if m in _METHODS else "OTHER", rule, str(status), protocol)
        _request_children[key] = child
    child.inc()
    REQUEST_SECONDS.observe(seconds)
    if upstream_seconds:
        UPSTREAM_SECONDS.observe(upstream_seconds)
    BYTES_IN.inc(bytes_in)
    BYTES_OUT.inc(bytes_out)


def _cached(cache: dict[str, Counter], metric: Counter, label: str) -> Counter:
    child = cache.get(label)
    if child is None:
        child = cache[label] = metric.labels(label)
    return child


def denied(reason: str) -> None:
    _cached(_denial_children, DENIALS, reason).inc()


def handshake_failed(reason: str) -> None:
    _cached(_failure_children, HANDSHAKE_FAILURES, reason).inc()


def upstream_error(reason: str) -> None:
    kind = UPSTREAM_KINDS.get(reason)
    if kind is not None:
        _cached(_upstream_children, UPSTREAM_ERRORS, kind).inc()


def handshake_rejected(reason: str) -> None:
    HANDSHAKES_REJECTED.labels(reason).inc()


def tunnel_closed(cause: str) -> None:
    TUNNEL_CLOSES.labels(cause).inc()


def http2_limit_exceeded(limit: str) -> None:
    HTTP2_LIMITS.labels(limit).inc()


def rejudged_refused(reason: str) -> None:
    REJUDGED.labels(reason).inc()


def client_cert_seen(not_after: dt.datetime, now: float) -> None:
    CLIENT_CERT_REMAINING.observe(max(not_after.timestamp() - now, 0.0))


def reloaded(ok: bool, state: RuntimeState | None = None) -> None:
    RELOADS.labels("ok" if ok else "failed").inc()
    if ok and state is not None:
        publish_state(state)


def publish_state(state: RuntimeState) -> None:
    """Gauges that describe the loaded material: expiry dates and the load time."""
    LAST_RELOAD.set(state.loaded_at)
    SERVER_CERT_EXPIRY.set(state.server_cert_not_after.timestamp())
    for subject, not_after in state.client_ca_not_after:
        CLIENT_CA_EXPIRY.labels(subject).set(not_after.timestamp())
    for path, next_update in state.crl_next_updates:
        if next_update is not None:
            CRL_NEXT_UPDATE.labels(path).set(next_update.timestamp())


def render() -> bytes:
    """Prometheus text format: all processes' values when multiprocess mode is on, else this one's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY)


def process_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]
