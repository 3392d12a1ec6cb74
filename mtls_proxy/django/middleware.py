"""``ClientCertMiddleware``: turn the proxy's identity headers into ``request.client_cert``.

Fail closed: a request that carries any identity header must prove it came from the
proxy (a valid signature for *this* request, or a trusted peer address), or it gets a 403
before any view runs; when the replay store cannot answer, a 503. A request without
identity headers passes with ``request.client_cert = None`` so public endpoints (health
checks, ...) keep working; authentication decides the rest.

When :class:`mtls_proxy.django.asgi.ClientCertASGIMiddleware` wraps the ASGI application it
has already verified the request before Django read the body; the middleware then takes
its verdict from the scope. Under WSGI the middleware itself runs before the body is read
(WSGI bodies are read lazily), provided no earlier middleware reads it: keep it first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, JsonResponse

from mtls_proxy.django.binding import binding_from_environ, binding_from_scope
from mtls_proxy.django.replay import ReplayStoreUnavailable
from mtls_proxy.django.verify import (
    SCOPE_KEY,
    headers_from_meta,
    headers_from_scope,
    log_refusal,
    refusal_for,
    verifier,
)
from mtls_proxy.identity import ClientCert, IdentityError, RequestBinding

__all__ = ["ClientCertMiddleware", "averify_scope_headers", "verify_scope_headers"]

_UNSET = object()


def _deny(request: HttpRequest, exc: IdentityError | ReplayStoreUnavailable) -> HttpResponse:
    refusal = refusal_for(exc)
    log_refusal(refusal, request.META.get("REMOTE_ADDR"), request.method or "", request.path)
    return JsonResponse(refusal.body, status=refusal.status)


def _request_binding(request: HttpRequest) -> Callable[[], RequestBinding]:
    scope = getattr(request, "scope", None)
    if isinstance(scope, Mapping):
        return lambda: binding_from_scope(scope)
    return lambda: binding_from_environ(request.META)


def _preverified(request: HttpRequest) -> Any:
    scope = getattr(request, "scope", None)
    return scope.get(SCOPE_KEY, _UNSET) if isinstance(scope, Mapping) else _UNSET


class ClientCertMiddleware:
    """Sets ``request.client_cert`` (:class:`~mtls_proxy.identity.ClientCert` or None), or answers 403/503.

    Works in both sync (WSGI) and async (ASGI) stacks. Settings and the replay store set-up
    are validated when Django builds the middleware chain, so a missing key or a
    per-process store under several workers stops start-up.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        verifier()  # validate now: ImproperlyConfigured at start-up, not at the first request
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        cert = _preverified(request)
        if cert is _UNSET:
            try:
                cert = verifier().verify(
                    headers_from_meta(request.META), _request_binding(request), request.META.get("REMOTE_ADDR")
                )
            except (IdentityError, ReplayStoreUnavailable) as exc:
                return _deny(request, exc)
        request.client_cert = cert
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        cert = _preverified(request)
        if cert is _UNSET:
            try:
                cert = await verifier().averify(
                    headers_from_meta(request.META), _request_binding(request), request.META.get("REMOTE_ADDR")
                )
            except (IdentityError, ReplayStoreUnavailable) as exc:
                return _deny(request, exc)
        request.client_cert = cert
        response: Awaitable[HttpResponse] = self.get_response(request)
        return await response


def _scope_peer(scope: Mapping[str, Any]) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def verify_scope_headers(scope: Mapping[str, Any]) -> ClientCert | None:
    """The verified identity of an ASGI (e.g. Channels WebSocket) connection, or None if it has none.

    Same rules as the middleware (the handshake is a GET of the scope's raw path); raises
    :class:`~mtls_proxy.identity.IdentityError` when headers are present but untrusted, and
    :class:`~mtls_proxy.django.replay.ReplayStoreUnavailable` when the replay store cannot
    answer, so the consumer can refuse the connection.
    """
    return verifier().verify(
        headers_from_scope(scope.get("headers", ())), lambda: binding_from_scope(scope), _scope_peer(scope)
    )


async def averify_scope_headers(scope: Mapping[str, Any]) -> ClientCert | None:
    """Async :func:`verify_scope_headers`, for use inside ``AsyncWebsocketConsumer.connect``."""
    return await verifier().averify(
        headers_from_scope(scope.get("headers", ())), lambda: binding_from_scope(scope), _scope_peer(scope)
    )
