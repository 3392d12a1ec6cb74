"""A blocking HTTP/2 test client over Python's ssl: python-hyper's h2 for the protocol, raw frames for attacks.

``H2Client`` negotiates ``h2`` by ALPN with a client certificate, sends requests (header
validation off, so malformed requests can be sent as they are), and collects per-stream
results: response headers, body, end, reset code, plus the GOAWAY if one came. ``raw()``
writes bytes built with hyperframe/hpack straight to the socket, for the frame-level
attacks h2 itself would never send.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import Frame, SettingsFrame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class StreamResult:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    informational: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None  # RST_STREAM error code from the server

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)


class H2Client:
    """One HTTP/2 connection to the proxy (TLS, ALPN h2, the context's client certificate)."""

    def __init__(self, port: int, ctx: ssl.SSLContext, *, host: str = "localhost", auto_ack: bool = True,
                 window: int | None = None, conn_window: int = 16 << 20, timeout: float = 30.0) -> None:
        ctx.set_alpn_protocols(["h2"])
        self.port = port
        self.host = host
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        assert self.sock.selected_alpn_protocol() == "h2", self.sock.selected_alpn_protocol()
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False, validate_inbound_headers=False,
        ))
        if window is not None:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window, h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.initiate_connection()
        if conn_window:
            self.conn.increment_flow_control_window(conn_window)  # as curl, OkHttp and browsers do
        self.auto_ack = auto_ack
        self.hold: set[int] = set()  # streams whose received data is never acknowledged (a stalled reader)
        self.streams: dict[int, StreamResult] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.events: list[h2.events.Event] = []
        self.flush()

    @property
    def authority(self) -> bytes:
        return f"{self.host}:{self.port}".encode()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def raw(self, data: bytes) -> None:
        self.flush()
        self.sock.sendall(data)

    # --- requests -------------------------------------------------------------------------------------------
    def headers_for(self, method: str, path: str,
                    extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
        return [(b":method", method.encode()), (b":scheme", b"https"), (b":authority", self.authority),
                (b":path", path.encode()), *(extra or [])]

    def send_headers(self, headers: list[tuple[bytes, bytes]], *, end: bool = True, sid: int | None = None) -> int:
        sid = sid if sid is not None else self.conn.get_next_available_stream_id()
        self.streams[sid] = StreamResult()
        self.conn.send_headers(sid, headers, end_stream=end)
        self.flush()
        return sid

    def request(self, method: str, path: str, extra: list[tuple[bytes, bytes]] | None = None,
                body: bytes | None = None) -> int:
        sid = self.send_headers(self.headers_for(method, path, extra), end=body is None)
        if body is not None:
            self.send_body(sid, body)
        return sid

    def send_body(self, sid: int, body: bytes, *, end: bool = True) -> None:
        """Send ``body`` as the windows allow (reading the server's WINDOW_UPDATEs meanwhile)."""
        view = memoryview(body)
        while view:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.read_some(5.0)
                if self.streams[sid].done:
                    return
                continue
            self.conn.send_data(sid, bytes(view[:room]))
            view = view[room:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    def get(self, path: str, timeout: float = 30.0) -> StreamResult:
        sid = self.request("GET", path)
        return self.wait(sid, timeout)

    # --- responses ------------------------------------------------------------------------------------------
    def read_some(self, timeout: float) -> bool:
        """One socket read (or nothing within ``timeout``); False once the server closed."""
        if self.closed:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            events = []
        for ev in events:
            self._on_event(ev)
        self.flush()
        return True

    def _on_event(self, ev: h2.events.Event) -> None:
        self.events.append(ev)
        sid = getattr(ev, "stream_id", None)
        st = self.streams.setdefault(sid, StreamResult()) if sid else None
        if isinstance(ev, h2.events.InformationalResponseReceived) and st is not None:
            st.informational.append(list(ev.headers))
        elif isinstance(ev, h2.events.ResponseReceived) and st is not None:
            st.headers = list(ev.headers)
        elif isinstance(ev, h2.events.DataReceived) and st is not None:
            st.body += ev.data
            if self.auto_ack and ev.flow_controlled_length and ev.stream_id not in self.hold:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded) and st is not None:
            st.ended = True
        elif isinstance(ev, h2.events.StreamReset) and st is not None:
            st.reset = int(ev.error_code)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev
            # Go on as a client that has not seen the GOAWAY yet (racing it), to see what such a client gets.
            self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("condition not met; events: " + repr(self.events[-10:]))
            if not self.read_some(min(remaining, 1.0)) and not predicate():
                raise ConnectionError("server closed; events: " + repr(self.events[-10:]))

    def wait(self, sid: int, timeout: float = 30.0) -> StreamResult:
        self.wait_for(lambda: self.streams[sid].done, timeout)
        return self.streams[sid]

    def wait_closed(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.read_some(max(deadline - time.monotonic(), 0.01)):
            if time.monotonic() > deadline:
                raise TimeoutError("server did not close the connection")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class RawH2:
    """Frames as bytes, both ways: for what a conforming client (h2 included) would never send."""

    def __init__(self, port: int, ctx: ssl.SSLContext, *, host: str = "localhost", timeout: float = 10.0) -> None:
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.buf = b""
        self.frames: list[Frame] = []
        self.closed = False
        self.sock.sendall(PREFACE + SettingsFrame(0).serialize())

    def send(self, *frames: Frame | bytes) -> None:
        data = b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames)
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.closed = True

    def read_until_closed(self, timeout: float = 10.0) -> list[Frame]:
        """Every frame the server sent until it closed the connection (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except (ConnectionResetError, ssl.SSLError, OSError):
                data = b""
            if not data:
                self.closed = True
                break
            self.buf += data
            self._parse()
        return self.frames

    def _parse(self) -> None:
        while len(self.buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                return
            frame.parse_body(memoryview(self.buf[9:9 + length]))
            self.buf = self.buf[9 + length:]
            self.frames.append(frame)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
