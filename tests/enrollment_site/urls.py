"""The enrollment app under ``.well-known/est/``, the admin, and one API view that shows who called."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response


@api_view(["GET"])
def whoami(request: Request) -> Response:
    cert: Any = request.auth
    return Response({"user": request.user.get_username(), "device": cert.common_name, "serial": cert.serial,
                     "san_uri": list(cert.san_uri)})


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [
    path("healthz", healthz),
    path("api/whoami", whoami),
    path("admin/", admin.site.urls),
    path(".well-known/est/", include("mtls_proxy.django.enrollment.urls")),
]
