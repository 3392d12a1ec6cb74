"""Server-side TLS over a plain TCP transport, with memory BIOs, as an asyncio Transport.

Why not ``connect_accepted_socket(ssl=...)``: the event loops' TLS protocols (uvloop's and
asyncio's) drop the alert OpenSSL writes when a handshake fails (python/cpython#98078), so a phone
with a revoked or unknown certificate only sees the connection close; and uvloop keeps a 256 KiB
read buffer per TLS connection, which idle phone connections pay for. Here the alert is flushed
before closing, plain TCP reads go through the loop's shared buffer, and the rest is a thin layer:
ciphertext in -> ``SSLObject`` -> plaintext to the application protocol, and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any

_READ_SIZE = 16384  # one TLS record carries at most 16 KiB of plaintext


class FirstByteTimeout(TimeoutError):
    """The client connected but sent nothing (an idle socket holding a handshake slot)."""


class TlsServerConnection(asyncio.Protocol):
    """TLS for one accepted TCP connection; after the handshake it is the app protocol's transport."""

    __slots__ = (
        "_app", "_app_factory", "_closing", "_done", "_handshake_deadline", "_in", "_loop", "_on_failure",
        "_on_success", "_out", "_paused", "_raw", "_ssl", "_started", "_timer",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        app_factory: Callable[[], asyncio.Protocol],
        handshake_timeout: float,
        on_success: Callable[[TlsServerConnection], bool],
        on_failure: Callable[[BaseException], None],
        loop: asyncio.AbstractEventLoop,
        first_byte_timeout: float | None = None,
    ) -> None:
        self._loop = loop
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=True)
        self._app_factory = app_factory
        self._app: asyncio.Protocol | None = None
        self._raw: asyncio.Transport | None = None
        self._on_success = on_success
        self._on_failure = on_failure
        self._done = False  # the handshake finished (or failed): the callbacks were called
        self._closing = False
        self._paused = False
        self._handshake_deadline = loop.time() + handshake_timeout
        first = handshake_timeout if first_byte_timeout is None else min(first_byte_timeout, handshake_timeout)
        self._timer: asyncio.TimerHandle | None = loop.call_later(first, self._first_byte_timeout)
        self._started = False  # the client sent its first bytes

    # --- the TCP side ----------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._in.write(data)
        if self._app is None:
            if self._done:
                return  # failed handshake (the alert is on its way) or held until admitted
            self._started = True  # the first-byte timer, when it fires, re-arms for the handshake's deadline
            self._handshake()
            if self._app is None:
                return
        self._read_app()

    def eof_received(self) -> bool | None:
        if self._app is not None:
            return self._app.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._done:
            self._done = True
            self._on_failure(exc or ConnectionResetError("connection closed during the TLS handshake"))
        app, self._app = self._app, None
        if app is not None:
            app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    # --- TLS ---------------------------------------------------------------------------------------------------
    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError, ValueError) as exc:
            self._fail(exc)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._done = True
        self._flush()  # Finished and the session ticket
        if self._on_success(self):
            self.admit()
        elif self._raw is not None:
            self._raw.pause_reading()  # over max_connections: held, handshake done, until admit()

    def admit(self) -> None:
        """Hand the connection to its application protocol (at once, or when a connection slot frees)."""
        if self._app is not None or self._closing or self._raw is None or self._raw.is_closing():
            return
        app = self._app_factory()
        self._app = app
        app.connection_made(self)  # type: ignore[arg-type]  # duck-typed: the Transport methods below
        if not self._paused:
            self._raw.resume_reading()
            if self._in.pending or self._ssl.pending():
                self._read_app()  # bytes that came while it was held

    def _fail(self, exc: BaseException) -> None:
        """A refused handshake: send OpenSSL's alert (the client learns why), then close."""
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._on_failure(exc)
        self._flush()
        self._closing = True
        if self._raw is not None:
            self._raw.close()

    def _first_byte_timeout(self) -> None:
        self._timer = None
        if self._started:  # the first bytes came: the whole handshake's deadline applies
            self._timer = self._loop.call_at(self._handshake_deadline, self._handshake_timeout)
        elif not self._done:
            self._fail(FirstByteTimeout("no TLS bytes from the client in time"))

    def _handshake_timeout(self) -> None:
        self._timer = None
        if not self._done:
            self._fail(TimeoutError("TLS handshake timed out"))

    def _read_app(self) -> None:
        """Decrypt every complete record received and hand the plaintext over in one call."""
        if self._paused or self._app is None:
            return
        ssl_obj = self._ssl
        chunks: list[bytes] = []
        eof = False
        while True:
            try:
                data = ssl_obj.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify from the client
                eof = True
                break
            except ssl.SSLError:
                self.abort()
                return
            if not data:
                break
            chunks.append(data)
            if not self._in.pending and not ssl_obj.pending():
                break
        if chunks:  # one parser pass per TCP read, not one per 16 KiB record
            self._app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        self._flush()
        if eof and self._app is not None and not self._app.eof_received():
            self.close()

    def _flush(self) -> None:
        data = self._out.read()
        if data and self._raw is not None and not self._raw.is_closing():
            self._raw.write(data)

    # --- asyncio.Transport for the application protocol --------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._ssl.write(data)
        self._flush()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        if self._closing:
            return
        for data in list_of_data:
            self._ssl.write(data)
        self._flush()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(ssl.SSLError, ValueError):
            self._ssl.unwrap()  # close_notify
        self._flush()
        if self._raw is not None:
            self._raw.close()

    def abort(self) -> None:
        self._closing = True
        if self._raw is not None:
            self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._raw is None or self._raw.is_closing()

    def pause_reading(self) -> None:
        self._paused = True
        if self._raw is not None:
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self._raw is not None:
            self._raw.resume_reading()
        if self._in.pending or self._ssl.pending():
            self._loop.call_soon(self._read_app)  # plaintext that arrived while paused

    def is_reading(self) -> bool:
        return not self._paused

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size() if self._raw is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._raw is not None:
            self._raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "sslcontext":
            return self._ssl.context
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        return self._raw.get_extra_info(name, default) if self._raw is not None else default

    def can_write_eof(self) -> bool:
        return False
