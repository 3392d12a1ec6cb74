"""``ClientCertMiddleware``: turn the proxy's identity headers into ``request.client_cert``.

Fail closed: a request that carries any identity header must prove it came from the
proxy (a valid signature, or a trusted peer address), or it gets a 403 before any view
runs. A request without identity headers passes with ``request.client_cert = None`` so
public endpoints (health checks, ...) keep working; authentication decides the rest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.cache import InvalidCacheBackendError, caches
from django.http import HttpRequest, HttpResponse, JsonResponse

from mtls_proxy.django.conf import ProxyIdentitySettings, get_settings
from mtls_proxy.identity import (
    IDENTITY_HEADER_KEYS,
    ClientCert,
    IdentityError,
    NonceCache,
    check_signature,
    decode_unsigned,
    header_key,
)

__all__ = [
    "ClientCertMiddleware",
    "NonceStore",
    "averify_scope_headers",
    "headers_from_meta",
    "headers_from_scope",
    "verify_scope_headers",
]

logger = logging.getLogger("mtls_proxy.django")

_META_KEYS: tuple[tuple[str, str], ...] = tuple(
    sorted((k, "HTTP_" + k.upper().replace("-", "_")) for k in IDENTITY_HEADER_KEYS)
)
# Backends whose storage is per process and culls at random when full: a replay could slip
# through a culled nonce, so the bounded NonceCache (which fails closed) is used instead.
_LOCAL_BACKENDS = ("django.core.cache.backends.locmem.", "django.core.cache.backends.dummy.")


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


class NonceStore:
    """Remembers signature nonces until they expire, to refuse replays.

    Uses the Django cache alias ``NONCE_CACHE`` when it is a shared backend (Redis,
    Memcached, database: one store for every worker process); otherwise, or when that
    cache errors, a bounded in-process :class:`NonceCache` (replays are then caught per
    process only: run one worker, or configure a shared cache).
    """

    def __init__(self, conf: ProxyIdentitySettings) -> None:
        self._local = NonceCache(conf.nonce_cache_max_entries)
        self._lock = threading.Lock()
        self._alias = conf.nonce_cache
        self._cache: Any = None
        if self._alias is not None:
            try:
                cache = caches[self._alias]
            except InvalidCacheBackendError:
                cache = None
            backend = f"{type(cache).__module__}." if cache is not None else ""
            if cache is not None and not backend.startswith(_LOCAL_BACKENDS):
                self._cache = cache

    @staticmethod
    def _cache_key(nonce: str) -> str:
        return f"mtls-proxy:nonce:{nonce}"

    def _seen_local(self, nonce: str, expires_at: float) -> bool:
        with self._lock:
            return self._local(nonce, expires_at)

    def seen(self, nonce: str, expires_at: float, now: float) -> bool:
        """True if ``nonce`` was used before; records it otherwise."""
        if self._cache is None:
            return self._seen_local(nonce, expires_at)
        try:
            added = self._cache.add(self._cache_key(nonce), 1, timeout=max(1, int(expires_at - now) + 1))
        except Exception:
            logger.warning("nonce cache %r failed; using the in-process nonce store", self._alias, exc_info=True)
            return self._seen_local(nonce, expires_at)
        return not added

    async def aseen(self, nonce: str, expires_at: float, now: float) -> bool:
        """Async :meth:`seen` (the in-process store never blocks; cache I/O goes through ``aadd``)."""
        if self._cache is None:
            return self._seen_local(nonce, expires_at)
        try:
            added = await self._cache.aadd(self._cache_key(nonce), 1, timeout=max(1, int(expires_at - now) + 1))
        except Exception:
            logger.warning("nonce cache %r failed; using the in-process nonce store", self._alias, exc_info=True)
            return self._seen_local(nonce, expires_at)
        return not added


class _Verifier:
    """The verification rules shared by the HTTP middleware and the WebSocket helper."""

    def __init__(self, conf: ProxyIdentitySettings) -> None:
        self.conf = conf
        self.nonces = NonceStore(conf)

    def _check(
        self, headers: Mapping[str, str], method: str, remote_addr: str | None
    ) -> tuple[ClientCert, tuple[str, float, float] | None]:
        if self.conf.trust == "trusted-peers":
            if not self.conf.is_trusted_peer(remote_addr):
                raise IdentityError("untrusted_peer", f"identity headers from {remote_addr or 'unix socket'}")
            return decode_unsigned(headers), None
        now = time.time()
        signed = check_signature(
            headers, method=method, key=self.conf.keys, max_age=self.conf.max_age, now=now,
            clock_skew=self.conf.clock_skew,
        )
        return signed.cert, (signed.nonce, signed.expires_at, now)

    def verify(self, headers: Mapping[str, str], method: str, remote_addr: str | None) -> ClientCert | None:
        if not headers:
            return None
        cert, pending = self._check(headers, method, remote_addr)
        if pending is not None and self.nonces.seen(*pending):
            raise IdentityError("replayed", f"nonce {pending[0]}")
        return cert

    async def averify(self, headers: Mapping[str, str], method: str, remote_addr: str | None) -> ClientCert | None:
        if not headers:
            return None
        cert, pending = self._check(headers, method, remote_addr)
        if pending is not None and await self.nonces.aseen(*pending):
            raise IdentityError("replayed", f"nonce {pending[0]}")
        return cert


_verifier_lock = threading.Lock()
_verifier: _Verifier | None = None


def _verifier_for(conf: ProxyIdentitySettings) -> _Verifier:
    # One verifier (hence one nonce store) for the current settings: the middleware and the
    # WebSocket helper must share nonces, or a nonce used over HTTP could be replayed over WS.
    global _verifier
    with _verifier_lock:
        if _verifier is None or _verifier.conf is not conf:
            _verifier = _Verifier(conf)
        return _verifier


def _deny(request: HttpRequest, exc: IdentityError) -> HttpResponse:
    logger.warning(
        "refused client identity headers: %s%s (peer=%s, %s %s)",
        exc.reason, f" ({exc.detail})" if exc.detail else "",
        request.META.get("REMOTE_ADDR") or "unix", request.method, request.path,
    )
    return JsonResponse({"error": "untrusted client identity", "reason": exc.reason}, status=403)


class ClientCertMiddleware:
    """Sets ``request.client_cert`` (:class:`~mtls_proxy.identity.ClientCert` or None), or answers 403.

    Works in both sync (WSGI) and async (ASGI) stacks. Settings are validated when Django
    builds the middleware chain, so a missing signing key stops start-up.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.verifier = _verifier_for(get_settings())
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        try:
            request.client_cert = self.verifier.verify(
                headers_from_meta(request.META), request.method or "GET", request.META.get("REMOTE_ADDR")
            )
        except IdentityError as exc:
            return _deny(request, exc)
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        try:
            request.client_cert = await self.verifier.averify(
                headers_from_meta(request.META), request.method or "GET", request.META.get("REMOTE_ADDR")
            )
        except IdentityError as exc:
            return _deny(request, exc)
        response: Awaitable[HttpResponse] = self.get_response(request)
        return await response


def _scope_peer(scope: Mapping[str, Any]) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def verify_scope_headers(scope: Mapping[str, Any]) -> ClientCert | None:
    """The verified identity of an ASGI (e.g. Channels WebSocket) connection, or None if it has none.

    Same rules as the middleware (the handshake is a GET); raises
    :class:`~mtls_proxy.identity.IdentityError` when headers are present but untrusted, so
    the consumer can refuse the connection.
    """
    verifier = _verifier_for(get_settings())
    return verifier.verify(headers_from_scope(scope.get("headers", ())), "GET", _scope_peer(scope))


async def averify_scope_headers(scope: Mapping[str, Any]) -> ClientCert | None:
    """Async :func:`verify_scope_headers`, for use inside ``AsyncWebsocketConsumer.connect``."""
    verifier = _verifier_for(get_settings())
    return await verifier.averify(headers_from_scope(scope.get("headers", ())), "GET", _scope_peer(scope))
