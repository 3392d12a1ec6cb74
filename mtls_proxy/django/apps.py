"""The ``mtls_proxy.django`` Django app: the nonce table of the database replay store and the system checks."""

from __future__ import annotations

from django.apps import AppConfig


class MtlsProxyConfig(AppConfig):  # type: ignore[misc]
    """Label ``mtls_proxy`` (not ``django``, which would read as Django's own)."""

    name = "mtls_proxy.django"
    label = "mtls_proxy"
    verbose_name = "mtls-proxy client identity"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from mtls_proxy.django import checks  # noqa: F401  (registers the system checks)
