"""Django REST framework authentication from the verified client certificate.

The certificate *is* the credential: the proxy already proved possession of the device
key in the TLS handshake, and :class:`~mtls_proxy.django.middleware.ClientCertMiddleware`
proved the headers came from the proxy. This class only maps the certificate to a user.
"""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from mtls_proxy.django.conf import get_settings
from mtls_proxy.identity import ClientCert

__all__ = ["CertificateUser", "ClientCertAuthentication", "default_user_resolver"]


class CertificateUser:
    """A user that exists only as a certificate: no database row, no password, no permissions.

    Enough for ``IsAuthenticated`` and for views that key data by device. Projects with a
    user table map certificates to real users with ``MTLS_PROXY["USER_RESOLVER"]``.
    """

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    id = None

    def __init__(self, client_cert: ClientCert) -> None:
        self.client_cert = client_cert
        # Certificates without a CN still identify a device, by fingerprint.
        self.username = client_cert.common_name or client_cert.fingerprint
        self.device = self.username

    def __str__(self) -> str:
        return self.username

    def __repr__(self) -> str:
        return f"<CertificateUser {self.username!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CertificateUser) and other.client_cert.fingerprint == self.client_cert.fingerprint

    def __hash__(self) -> int:
        return hash(self.client_cert.fingerprint)

    def get_username(self) -> str:
        return self.username

    def has_perm(self, perm: str, obj: object = None) -> bool:
        return False

    def has_perms(self, perm_list: object, obj: object = None) -> bool:
        return False

    def has_module_perms(self, app_label: str) -> bool:
        return False


def default_user_resolver(client_cert: ClientCert) -> CertificateUser:
    """The default ``USER_RESOLVER``: every verified certificate is a :class:`CertificateUser`."""
    return CertificateUser(client_cert)


class ClientCertAuthentication(BaseAuthentication):  # type: ignore[misc]
    """DRF authentication: ``request.user`` from the middleware's ``request.client_cert``.

    Returns None (not authenticated by this class) when the request carries no identity,
    so other authentication classes may still apply; fails when a verified certificate
    maps to no user, because an explicit "no" from the resolver must not fall through.
    """

    def authenticate(self, request: Any) -> tuple[Any, ClientCert] | None:
        django_request = getattr(request, "_request", request)
        client_cert: ClientCert | None = getattr(django_request, "client_cert", None)
        if client_cert is None:
            return None
        user = get_settings().user_resolver(client_cert)
        if user is None:
            raise AuthenticationFailed("client certificate is not mapped to a user")
        return user, client_cert

    def authenticate_header(self, request: Any) -> str:
        # Makes DRF answer 401 (not 403) to unauthenticated requests.
        return 'ClientCert realm="api"'
