"""``path(".well-known/est/", include("mtls_proxy.django.enrollment.urls"))``: the EST-style layout.

Paths a proxy must admit without a client certificate: ``challenge``, ``simpleenroll``,
``cacerts``, ``crl``. Paths that need one: ``reenroll-challenge``, ``simplereenroll``.
"""

from __future__ import annotations

from django.urls import path

from mtls_proxy.django.enrollment import views
from mtls_proxy.django.enrollment.conf import get_settings

get_settings()  # ImproperlyConfigured when the URLconf loads, not at the first enrollment

app_name = "mtls_enrollment"
urlpatterns = [
    path("challenge", views.ChallengeView.as_view(), name="challenge"),
    path("simpleenroll", views.EnrollView.as_view(), name="simpleenroll"),
    path("reenroll-challenge", views.ReenrollChallengeView.as_view(), name="reenroll-challenge"),
    path("simplereenroll", views.ReenrollView.as_view(), name="simplereenroll"),
    path("cacerts", views.cacerts, name="cacerts"),
    path("crl", views.crl, name="crl"),
]
