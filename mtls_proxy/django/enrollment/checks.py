"""System check: ``MTLS_ENROLLMENT`` that cannot issue is an error (``mtls_enrollment.E001``), never a warning."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from mtls_proxy.django.enrollment.conf import get_settings

__all__ = ["check_enrollment_settings"]


@checks.register(checks.Tags.security)  # type: ignore[untyped-decorator]
def check_enrollment_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        get_settings()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), hint="see docs/enrollment.md, 'Settings'", id="mtls_enrollment.E001")]
    return []
