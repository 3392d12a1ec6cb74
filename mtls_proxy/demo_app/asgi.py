"""The demo's ASGI application: Django for HTTP (identity checked before the body), Channels for WebSockets."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mtls_proxy.demo_app.settings")

from django.core.asgi import get_asgi_application

# Django must be set up before anything imports models or consumers.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from mtls_proxy.demo_app.consumers import EchoConsumer  # noqa: E402
from mtls_proxy.django.asgi import ClientCertASGIMiddleware  # noqa: E402

router = ProtocolTypeRouter(
    {
        "http": ClientCertASGIMiddleware(django_asgi_app),
        "websocket": URLRouter([path("ws/echo", EchoConsumer.as_asgi())]),
    }
)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The router, plus a lifespan handler: each worker says ``WORKER <pid>`` once it serves."""
    if scope["type"] != "lifespan":
        await router(scope, receive, send)
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            os.write(1, f"WORKER {os.getpid()}\n".encode())  # one write: workers share the pipe
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
