"""One place turning a finished exchange into metrics and the access line."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mtls_proxy import metrics
from mtls_proxy.logs import access_log, format_access, is_json, worker_index

if TYPE_CHECKING:
    from mtls_proxy.exchange.exchange import Exchange
    from mtls_proxy.judging import ConnectionFacts


def record_exchange(facts: ConnectionFacts, ex: Exchange, reason: str, duration: float, protocol: str) -> None:
    """Count ``ex`` in the request metrics and write its access line (when the access log is on)."""
    head = ex.head
    bytes_in = head.head_size + ex.body_received
    metrics.observe_request(head.method, ex.rule, ex.resp_status, duration, ex.upstream_time, bytes_in, ex.bytes_out,
                            protocol)
    if access_log.disabled or not access_log.isEnabledFor(logging.INFO):
        return
    fields = {
        "client": facts.client_ip.decode(),
        "cn": facts.cn,
        "fp": facts.fp16,
        "method": head.method.decode("ascii", "replace") or "-",
        "path": head.target.decode("ascii", "replace")[:1024] or "-",
        "status": ex.resp_status,
        "bytes_in": bytes_in,
        "bytes_out": ex.bytes_out,
        "total_ms": round(duration * 1000, 2),
        "upstream_ms": round(ex.upstream_time * 1000, 2),
        "rule": ex.rule,
        "reason": reason if reason != "-" else ex.decision_reason,
        "protocol": protocol,
    }
    worker = worker_index()
    if worker is not None:
        fields["worker"] = worker
    if is_json():  # the effective format: --log-format overrides logging.format
        access_log.info("access", extra={"fields": fields})
    else:
        access_log.info(format_access(fields))
