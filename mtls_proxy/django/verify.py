"""The verification rules shared by the Django middleware, the ASGI wrapper and the WebSocket helpers.

One :class:`Verifier` per settings object (hence one replay store per process), so a nonce
used over HTTP cannot be replayed over a WebSocket, nor through the other entry point.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from mtls_proxy.django.checks import current_problems
from mtls_proxy.django.conf import ProxyIdentitySettings, get_settings
from mtls_proxy.django.replay import ReplayStore, ReplayStoreUnavailable, build_replay_store
from mtls_proxy.identity import (
    IDENTITY_HEADER_KEYS,
    ClientCert,
    IdentityError,
    RequestBinding,
    SignedIdentity,
    check_signature,
    decode_unsigned,
    header_key,
)

__all__ = [
    "SCOPE_KEY",
    "Refusal",
    "Verifier",
    "headers_from_meta",
    "headers_from_scope",
    "log_refusal",
    "refusal_for",
    "verifier",
]

logger = logging.getLogger("mtls_proxy.django")

#: Where the ASGI wrapper leaves its verdict (``ClientCert`` or ``None``) for the middleware.
#: Only the server builds the scope, so a client cannot set it.
SCOPE_KEY = "mtls_proxy.client_cert"

_META_KEYS: tuple[tuple[str, str], ...] = tuple(
    sorted((k, "HTTP_" + k.upper().replace("-", "_")) for k in IDENTITY_HEADER_KEYS)
)


def headers_from_meta(meta: Mapping[str, Any]) -> dict[str, str]:
    """The identity headers present in ``request.META``, keyed by :func:`header_key`."""
    return {key: meta[meta_key] for key, meta_key in _META_KEYS if meta_key in meta}


def headers_from_scope(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """ASGI scope headers -> identity headers keyed by :func:`header_key`.

    Spellings that collapse to one key (``X_Client_Cert`` and ``X-Client-Cert``) and
    duplicates are joined with ``,`` the way Django does for META, so they cannot verify.
    """
    out: dict[str, str] = {}
    for name, value in raw_headers:
        key = header_key(name)
        if key in IDENTITY_HEADER_KEYS:
            text = value.decode("latin-1")
            out[key] = f"{out[key]},{text}" if key in out else text
    return out


class Refusal:
    """What a refused request gets: status, JSON body, log level."""

    def __init__(self, status: int, error: str, reason: str, detail: str) -> None:
        self.status = status
        self.reason = reason
        self.detail = detail
        self.body = {"error": error, "reason": reason}

    def json_bytes(self) -> bytes:
        return json.dumps(self.body).encode("ascii")


def refusal_for(exc: IdentityError | ReplayStoreUnavailable) -> Refusal:
    """403 for an identity that does not verify; 503 when the replay store cannot answer."""
    if isinstance(exc, ReplayStoreUnavailable):
        return Refusal(503, "replay store unavailable", exc.reason, exc.detail)
    return Refusal(403, "untrusted client identity", exc.reason, exc.detail)


def log_refusal(refusal: Refusal, peer: str | None, method: str, path: str) -> None:
    log = logger.error if refusal.status >= 500 else logger.warning
    log(
        "refused client identity headers: %s%s (peer=%s, %s %s)",
        refusal.reason, f" ({refusal.detail})" if refusal.detail else "", peer or "unix", method, path,
    )


class Verifier:
    """Signature (or trusted peer), freshness, request binding, then the nonce claim."""

    def __init__(self, conf: ProxyIdentitySettings) -> None:
        errors = [p for p in current_problems() if p.is_serious()]
        if errors:
            raise ImproperlyConfigured("; ".join(f"{p.id}: {p.msg}" for p in errors))
        self.conf = conf
        self.store: ReplayStore | None = build_replay_store(conf) if conf.trust == "signature" else None

    def _check(
        self, headers: Mapping[str, str], request: Callable[[], RequestBinding], remote_addr: str | None
    ) -> tuple[ClientCert | None, SignedIdentity | None]:
        if self.conf.trust == "trusted-peers":
            if not self.conf.is_trusted_peer(remote_addr):
                raise IdentityError("untrusted_peer", f"identity headers from {remote_addr or 'unix socket'}")
            return decode_unsigned(headers), None
        signed = check_signature(
            headers, request=request(), keys=self.conf.keys, max_age=self.conf.max_age,
            now=time.time(), clock_skew=self.conf.clock_skew,
        )
        return signed.cert, signed

    def verify(
        self, headers: Mapping[str, str], request: Callable[[], RequestBinding], remote_addr: str | None
    ) -> ClientCert | None:
        """The verified identity, None without identity headers; raises IdentityError / ReplayStoreUnavailable."""
        if not headers:
            return None
        cert, signed = self._check(headers, request, remote_addr)
        if signed is not None:
            assert self.store is not None
            if not self.store.claim(signed.nonce, signed.expires_at, time.time()):
                raise IdentityError("replayed", f"nonce {signed.nonce}")
        return cert

    async def averify(
        self, headers: Mapping[str, str], request: Callable[[], RequestBinding], remote_addr: str | None
    ) -> ClientCert | None:
        """Async :meth:`verify`."""
        if not headers:
            return None
        cert, signed = self._check(headers, request, remote_addr)
        if signed is not None:
            assert self.store is not None
            if not await self.store.aclaim(signed.nonce, signed.expires_at, time.time()):
                raise IdentityError("replayed", f"nonce {signed.nonce}")
        return cert


_lock = threading.Lock()
_current: Verifier | None = None


def verifier() -> Verifier:
    """The verifier for the current settings (rebuilt when tests override ``MTLS_PROXY``)."""
    global _current
    conf = get_settings()
    with _lock:
        if _current is None or _current.conf is not conf:
            _current = Verifier(conf)
        return _current
