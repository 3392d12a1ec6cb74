"""``MTLS_PROXY["USER_RESOLVER"]`` for enrolled devices: the certificate signs in the user who enrolled it.

``"USER_RESOLVER": "mtls_proxy.django.enrollment.resolvers.enrolled_user"`` makes DRF's
``ClientCertAuthentication`` return that user (``request.user``), and refuse (401) a certificate
this service did not issue, one that is revoked, or one of a revoked device, at once: Django does
not wait for the proxies' next CRL fetch. One indexed query per request.
"""

from __future__ import annotations

from typing import Any

from mtls_proxy.django.enrollment.refusals import EnrollmentRefusal
from mtls_proxy.django.enrollment.service import device_for_certificate
from mtls_proxy.identity import ClientCert

__all__ = ["enrolled_user"]


def enrolled_user(client_cert: ClientCert) -> Any | None:
    try:
        device, _ = device_for_certificate(client_cert)
    except EnrollmentRefusal:
        return None
    return device.user
