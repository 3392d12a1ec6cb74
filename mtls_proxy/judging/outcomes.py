"""One table from a refusal or failure reason to what the client sees and what becomes of the connection.

Frontends and the exchange never test status numbers: they look the reason up here.
``closes``: after answering, the connection is closed (the byte stream or the peer is
no longer trusted, or the body was not read).
"""

from __future__ import annotations

from dataclasses import dataclass

from mtls_proxy.errors import ProxyError


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    closes: bool


_BAD_REQUEST = Outcome(400, True)
_DENIED = Outcome(403, False)

#: every reason :func:`mtls_proxy.judging.judge` can return, and the proxy's own failures
OUTCOMES: dict[str, Outcome] = {
    # framing and target (the request stream cannot be trusted after them)
    "multiple_host": _BAD_REQUEST,
    "missing_host": _BAD_REQUEST,
    "bad_host": _BAD_REQUEST,
    "te_in_http10": _BAD_REQUEST,
    "bad_upgrade": _BAD_REQUEST,
    "not_origin_form": _BAD_REQUEST,
    "control_character": _BAD_REQUEST,
    "backslash": _BAD_REQUEST,
    "fragment": _BAD_REQUEST,
    "bad_percent_encoding": _BAD_REQUEST,
    "encoded_separator": _BAD_REQUEST,
    "invalid_utf8": _BAD_REQUEST,
    "path_too_long": _BAD_REQUEST,
    "too_many_segments": _BAD_REQUEST,
    "request_head_too_large": Outcome(431, True),
    "body_too_large": Outcome(413, True),
    "client_body_timeout": Outcome(408, True),
    "expectation_failed": Outcome(417, False),
    "http_version_not_supported": Outcome(505, False),
    "unsupported_transfer_coding": Outcome(501, False),
    "host_sni_mismatch": Outcome(421, False),
    # the certificate's standing
    "client_auth_eku_missing": _DENIED,
    "leaf_is_ca": _DENIED,
    "ca_not_trusted": _DENIED,
    "chain_too_long": _DENIED,
    "revoked": _DENIED,
    "ca_revoked": _DENIED,
    "denylisted": _DENIED,
    "cert_expired": _DENIED,
    "cert_not_yet_valid": _DENIED,
    "ca_expired": _DENIED,
    "ca_not_yet_valid": _DENIED,
    "crl_expired": _DENIED,
    # the rules
    "denied_by_rule": _DENIED,
    "client_not_allowed": _DENIED,
    "no_matching_rule": _DENIED,
    "client_cert_required": _DENIED,
    # admission after judgment
    "rate_limited": Outcome(429, False),
}


def outcome(error: ProxyError) -> Outcome:
    """What ``error`` means on the wire; unknown reasons fall back to the error class's status."""
    known = OUTCOMES.get(error.reason)
    if known is not None:
        return known
    return Outcome(error.status, error.status in (400, 413, 431))
