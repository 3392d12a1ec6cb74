"""Views of the demo upstream: each reports what Django really received.

They are async so that slow and throttled responses do not queue behind each other on
Django's single thread for sync views; body hashing of large uploads moves to a worker
thread so one upload does not stall every other request on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils.decorators import sync_and_async_middleware
from django.views.decorators.http import require_http_methods
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mtls_proxy.demo_app.content import pattern_chunks

READ_CHUNK = 65536
_INLINE_BODY_LIMIT = 256 * 1024  # hash smaller bodies on the loop: a thread hop costs more


def _cert_dict(request: HttpRequest) -> dict[str, Any] | None:
    cert = getattr(request, "client_cert", None)
    return cert.as_dict() if cert is not None else None


def _digest_body(request: HttpRequest) -> tuple[str, int]:
    # Chunked on purpose: the demo must never hold a multi-GB upload in memory.
    digest = hashlib.sha256()
    length = 0
    while chunk := request.read(READ_CHUNK):
        digest.update(chunk)
        length += len(chunk)
    return digest.hexdigest(), length


async def _adigest_body(request: HttpRequest) -> tuple[str, int]:
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared <= _INLINE_BODY_LIMIT and "HTTP_TRANSFER_ENCODING" not in request.META:
        return _digest_body(request)
    return await asyncio.to_thread(_digest_body, request)


@sync_and_async_middleware
def worker_pid_middleware(get_response: Any) -> Any:
    """``X-Demo-Pid`` on every response: tests see which worker process answered (403s included)."""
    if iscoroutinefunction(get_response):

        async def amiddleware(request: HttpRequest) -> HttpResponse:
            response: HttpResponse = await get_response(request)
            response["X-Demo-Pid"] = str(os.getpid())
            return response

        return amiddleware

    def middleware(request: HttpRequest) -> HttpResponse:
        response: HttpResponse = get_response(request)
        response["X-Demo-Pid"] = str(os.getpid())
        return response

    return middleware


def _bad_request(message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=400)


async def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


@require_http_methods(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
async def echo(request: HttpRequest) -> JsonResponse:
    """Everything the proxy changed or kept is visible here: path forms, headers, body hash."""
    sha, length = await _adigest_body(request)
    raw_path = getattr(request, "scope", {}).get("raw_path")
    headers = {
        key: value
        for key, value in request.META.items()
        if key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")
    }
    return JsonResponse(
        {
            "method": request.method,
            "path": request.path,
            "path_info": request.path_info,
            "query_string": request.META.get("QUERY_STRING", ""),
            "raw_path": raw_path.decode("latin-1") if isinstance(raw_path, bytes) else None,
            "headers": headers,
            "body_sha256": sha,
            "body_length": length,
            "pid": os.getpid(),
            "client_cert": _cert_dict(request),
        }
    )


@require_http_methods(["POST", "PUT"])
async def upload(request: HttpRequest) -> JsonResponse:
    sha, length = await _adigest_body(request)
    return JsonResponse({"sha256": sha, "length": length})


def _download_params(request: HttpRequest) -> tuple[int, str, float] | JsonResponse:
    try:
        size = int(request.GET["size"])
        rate = float(request.GET.get("rate") or 0)
    except (KeyError, ValueError):
        return _bad_request("size (integer) is required; rate must be a number")
    if size < 0 or rate < 0:
        return _bad_request("size and rate must not be negative")
    return size, request.GET.get("seed", "0"), rate


async def _pattern_stream(size: int, seed: str, rate: float) -> AsyncIterator[bytes]:
    if not rate:
        for piece in pattern_chunks(size, seed):
            yield piece
        return
    # About 20 pieces a second, each sent when the schedule says so: a steady, slow stream.
    loop = asyncio.get_running_loop()
    step = max(1, min(1 << 16, int(rate / 20)))
    start = loop.time()
    sent = 0
    for piece in pattern_chunks(size, seed, chunk=step):
        delay = start + sent / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield piece
        sent += len(piece)


@require_http_methods(["GET", "HEAD"])
async def download(request: HttpRequest) -> HttpResponse:
    """``size`` bytes of the seeded pattern with a Content-Length (``rate``: bytes/second)."""
    params = _download_params(request)
    if isinstance(params, JsonResponse):
        return params
    size, seed, rate = params
    response = StreamingHttpResponse(_pattern_stream(size, seed, rate), content_type="application/octet-stream")
    response["Content-Length"] = str(size)
    return response


@require_http_methods(["GET", "HEAD"])
async def download_chunked(request: HttpRequest) -> HttpResponse:
    """Same as :func:`download` without Content-Length, so the server uses chunked encoding."""
    params = _download_params(request)
    if isinstance(params, JsonResponse):
        return params
    size, seed, rate = params
    return StreamingHttpResponse(_pattern_stream(size, seed, rate), content_type="application/octet-stream")


async def slow(request: HttpRequest) -> JsonResponse:
    try:
        seconds = float(request.GET.get("seconds", "1"))
    except ValueError:
        return _bad_request("seconds must be a number")
    await asyncio.sleep(max(0.0, seconds))
    return JsonResponse({"slept": seconds})


async def admin_area(request: HttpRequest) -> JsonResponse:
    """Stands for an internal area that the proxy's policy must keep mobile clients away from."""
    return JsonResponse({"area": "admin", "path": request.path})


async def files(request: HttpRequest, rest: str) -> JsonResponse:
    return JsonResponse({"rest": rest, "path": request.path})


class WhoAmI(APIView):  # type: ignore[misc]
    """A DRF view protected by the certificate: 200 only for a verified, mapped client."""

    def get(self, request: Request) -> Response:
        user = request.user
        return Response(
            {
                "user": str(user),
                "device": getattr(user, "device", None),
                "client_cert": request.auth.as_dict() if request.auth is not None else None,
            }
        )


# --- added for the proxy's streaming/limits tests: which uploads Django saw whole ---------------------
#: upload id -> what the view received; a view only runs once Django has read the whole body,
#: so an id appears here only if Django took a body as complete.
_COMPLETED_UPLOADS: dict[str, dict[str, Any]] = {}


@require_http_methods(["POST", "PUT"])
async def tracked_upload(request: HttpRequest, upload_id: str) -> JsonResponse:
    """Like :func:`upload`, and records ``upload_id`` as completed (see :func:`tracked_upload_status`)."""
    sha, length = await _adigest_body(request)
    _COMPLETED_UPLOADS[upload_id] = {"sha256": sha, "length": length}
    return JsonResponse({"id": upload_id, "sha256": sha, "length": length})


async def tracked_upload_status(request: HttpRequest, upload_id: str) -> JsonResponse:
    record = _COMPLETED_UPLOADS.get(upload_id)
    return JsonResponse({"id": upload_id, "completed": record is not None, **(record or {})})


async def set_cookies(request: HttpRequest) -> JsonResponse:
    """Two Set-Cookie fields in one response: a proxy must keep repeated response fields."""
    response = JsonResponse({"cookies": ["a", "b"]})
    response.set_cookie("a", "1")
    response.set_cookie("b", "2", httponly=True)
    return response


# --- added for the hardening tests (tests/hardening): did a request reach Django at all? ---------------
#: marker -> every request Django routed to ``api/probe/<marker>``. Smuggling tests hide such a
#: request inside bytes the proxy must refuse, then ask Django directly (not through the proxy)
#: whether it ever ran.
_PROBES: dict[str, list[dict[str, Any]]] = {}


async def probe(request: HttpRequest, marker: str) -> JsonResponse:
    """Records this request under ``marker`` (any method); answers how often it was seen."""
    sha, length = await _adigest_body(request)
    record = {
        "method": request.method,
        "path": request.path,
        "query_string": request.META.get("QUERY_STRING", ""),
        "signed": "HTTP_X_CLIENT_CERT_SIGNATURE" in request.META,
        "body_length": length,
        "body_sha256": sha,
        "headers": {k: v for k, v in request.META.items() if k.startswith("HTTP_")},
    }
    _PROBES.setdefault(marker, []).append(record)
    return JsonResponse({"probe": marker, "seen": len(_PROBES[marker])})


async def probe_seen(request: HttpRequest, marker: str) -> JsonResponse:
    return JsonResponse({"marker": marker, "requests": _PROBES.get(marker, [])})
