"""Streaming one judged request to Django and its response back, whatever the client's protocol.

:mod:`.forwarding` builds the upstream request head (pure); :class:`.exchange.Exchange`
moves one request/response (its body, its upstream timers, retry, and the WebSocket tunnel
it may become) and talks to its frontend through :class:`.exchange.Frontend`;
:mod:`.record` turns a finished exchange into metrics and the access line.
"""
