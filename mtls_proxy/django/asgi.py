"""``ClientCertASGIMiddleware``: verify the identity on the ASGI scope, before Django reads the body.

Django's ASGI handler reads the whole request body before any middleware runs. A phone
uploading for 40 s then reaches ``ClientCertMiddleware`` with a 40 s old signature, and
the only fix there would be a signature window as long as the slowest upload, which is
also how long a captured header set stays usable. Wrapping the application checks the
signature, its freshness and the nonce when the request head arrives, so ``MAX_AGE`` only
has to cover the proxy->Django hop (default 10 s) whatever the upload time::

    # asgi.py
    from django.core.asgi import get_asgi_application
    from mtls_proxy.django.asgi import ClientCertASGIMiddleware

    application = ClientCertASGIMiddleware(get_asgi_application())

A refused request is answered here (403 or 503, the same JSON as the middleware) without
reading its body; an accepted one carries the verdict in the scope, where the middleware
takes it instead of checking again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mtls_proxy.django.binding import binding_from_scope
from mtls_proxy.django.replay import ReplayStoreUnavailable
from mtls_proxy.django.verify import SCOPE_KEY, headers_from_scope, log_refusal, refusal_for, verifier
from mtls_proxy.identity import IdentityError

__all__ = ["ClientCertASGIMiddleware"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ClientCertASGIMiddleware:
    """Wraps an ASGI application; only ``http`` scopes are checked (WebSockets: ``averify_scope_headers``)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        try:
            cert = await verifier().averify(
                headers_from_scope(scope.get("headers", ())),
                lambda: binding_from_scope(scope),
                str(client[0]) if client else None,
            )
        except (IdentityError, ReplayStoreUnavailable) as exc:
            refusal = refusal_for(exc)
            log_refusal(refusal, str(client[0]) if client else None, str(scope.get("method", "")),
                        str(scope.get("path", "")))
            body = refusal.json_bytes()
            await send({
                "type": "http.response.start",
                "status": refusal.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            })
            await send({"type": "http.response.body", "body": body})
            return
        await self.app({**scope, SCOPE_KEY: cert}, receive, send)
