"""The error tree. Each error carries the HTTP status it maps to; what a refusal means on the wire
(status, whether the connection closes) is decided in one table, :mod:`mtls_proxy.judging.outcomes`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ProxyError(Exception):
    """Base class; ``status`` is the HTTP status a client sees, ``reason`` a short code for logs and bodies."""

    status = 500
    reason = "internal_error"

    def __init__(self, message: str = "", reason: str | None = None) -> None:
        super().__init__(message or self.reason)
        if reason is not None:
            self.reason = reason


class BadRequest(ProxyError):
    """The client broke an HTTP rule or sent something ambiguous; the connection is not trusted after it."""

    status = 400
    reason = "bad_request"


class HeadTooLarge(BadRequest):
    status = 431
    reason = "request_head_too_large"


class Refused(ProxyError):
    """A request :func:`mtls_proxy.judging.judge` refused; its status comes from the outcome table."""

    def __init__(self, reason: str, status: int, message: str = "") -> None:
        super().__init__(message or reason, reason)
        self.status = status


class UpstreamError(ProxyError):
    status = 502
    reason = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    reason = "upstream_timeout"


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration: ``key_path`` is e.g. ``tls.client_ca[1]``."""

    key_path: str
    message: str

    def __str__(self) -> str:
        return f"{self.key_path}: {self.message}" if self.key_path else self.message


class ConfigError(Exception):
    """The configuration cannot be used; lists every problem found, each with its key path."""

    def __init__(self, source: str, problems: Sequence[ConfigProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)
