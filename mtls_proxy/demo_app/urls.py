"""Routes of the demo upstream (see views.py for what each one proves)."""

from __future__ import annotations

from django.urls import path, re_path

from mtls_proxy.demo_app import views

urlpatterns = [
    path("healthz", views.healthz),
    path("api/echo", views.echo),
    re_path(r"^api/echo/.*\Z", views.echo),
    path("api/upload", views.upload),
    path("api/download", views.download),
    path("api/download-chunked", views.download_chunked),
    path("api/slow", views.slow),
    path("api/whoami", views.WhoAmI.as_view()),
    path("api/files/<path:rest>", views.files),
    re_path(r"^admin(?:/.*)?\Z", views.admin_area),
    path("api/tracked-upload/<str:upload_id>", views.tracked_upload),
    path("api/tracked-upload/<str:upload_id>/status", views.tracked_upload_status),
    path("api/set-cookies", views.set_cookies),
    # hardening tests (tests/hardening): which requests reached Django, by marker
    path("api/probe/<str:marker>", views.probe),
    path("api/probe-seen/<str:marker>", views.probe_seen),
]
