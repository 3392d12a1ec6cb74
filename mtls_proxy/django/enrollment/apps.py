"""The ``mtls_enrollment`` Django app: devices, issued certificates, challenges, the CRL, the admin."""

from __future__ import annotations

from django.apps import AppConfig


class EnrollmentConfig(AppConfig):  # type: ignore[misc]
    name = "mtls_proxy.django.enrollment"
    label = "mtls_enrollment"
    verbose_name = "mtls-proxy device enrollment"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from mtls_proxy.django.enrollment import checks  # noqa: F401  (registers the system checks)
