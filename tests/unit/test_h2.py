"""The HTTP/2 frontend's frame-level pieces that need no connection: the CONTINUATION cap and the limit names."""

from __future__ import annotations

import hpack
import pytest
from h2.exceptions import DenialOfServiceError, ProtocolError, TooManyStreamsError
from hpack.exceptions import InvalidTableSizeError, OversizedHeaderListError
from hyperframe.frame import ContinuationFrame, HeadersFrame

from mtls_proxy.frontends.h2 import _CappedFrameBuffer, _Limit, limit_of

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _buffer(cap: int) -> _CappedFrameBuffer:
    buf = _CappedFrameBuffer(cap)
    buf.max_frame_size = 16384
    buf.add_data(PREFACE)
    return buf


def _frames(n_continuations: int) -> bytes:
    block = hpack.Encoder().encode([(":method", "GET")])
    frames = [HeadersFrame(1, block)]
    frames += [ContinuationFrame(1, b"", flags=["END_HEADERS"] if i == n_continuations - 1 else [])
               for i in range(n_continuations)]
    return b"".join(f.serialize() for f in frames)


@pytest.mark.parametrize("cap", [0, 1, 16])
def test_a_header_block_with_cap_continuations_is_accepted(cap):
    buf = _buffer(cap)
    buf.add_data(_frames(cap) if cap else HeadersFrame(1, b"\x82", flags=["END_HEADERS"]).serialize())
    (frame,) = list(buf)
    assert isinstance(frame, HeadersFrame) and "END_HEADERS" in frame.flags


@pytest.mark.parametrize("cap", [0, 1, 16])
def test_one_continuation_more_is_refused_with_enhance_your_calm(cap):
    buf = _buffer(cap)
    buf.add_data(_frames(cap + 1))
    with pytest.raises(_Limit) as info:
        list(buf)
    assert info.value.limit == "continuation_frames"
    assert info.value.error_code == 11  # ENHANCE_YOUR_CALM


def _caused(exc: ProtocolError, cause: BaseException) -> ProtocolError:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(("exc", "limit"), [
    (_Limit("continuation_frames", "x"), "continuation_frames"),
    (TooManyStreamsError("x"), "concurrent_streams"),
    (_caused(DenialOfServiceError("x"), OversizedHeaderListError("x")), "header_list_size"),
    (_caused(ProtocolError("x"), InvalidTableSizeError("x")), "header_table_size"),
    (ProtocolError("Invalid input"), None),
])
def test_limit_names(exc, limit):
    assert limit_of(exc) == limit
