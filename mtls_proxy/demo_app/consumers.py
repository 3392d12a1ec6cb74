"""WebSocket echo: proves upgrades, both frame types and the identity reach Channels."""

from __future__ import annotations

import json
import logging
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from mtls_proxy.django.middleware import averify_scope_headers
from mtls_proxy.django.replay import ReplayStoreUnavailable
from mtls_proxy.identity import IdentityError

logger = logging.getLogger("mtls_proxy.demo_app")


class EchoConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        try:
            cert = await averify_scope_headers(self.scope)
        except (IdentityError, ReplayStoreUnavailable) as exc:
            # Closing before accept makes the server answer the handshake with 403.
            logger.warning("refused WebSocket identity headers: %s", exc.reason)
            await self.close()
            return
        await self.accept()
        headers: dict[str, str] = {}
        for name, value in self.scope.get("headers", ()):
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]},{text}" if key in headers else text
        hello = {"hello": True, "headers": headers, "client_cert": cert.as_dict() if cert is not None else None}
        await self.send(text_data=json.dumps(hello))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        if text_data is not None:
            await self.send(text_data=text_data)
        else:
            await self.send(bytes_data=bytes_data or b"")
