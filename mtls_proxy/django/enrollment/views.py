"""The enrollment endpoints: RFC 7030 (EST) wire formats where they fit, JSON where EST has no place.

- ``POST challenge`` (user authentication): ``{"challenge": b64, "expires_at": RFC 3339}``.
- ``POST simpleenroll`` (user authentication): JSON ``{"platform", "challenge", "csr", evidence...}``
  -> ``application/pkcs7-mime; smime-type=certs-only``, base64 DER (RFC 7030 4.2.3), or with
  ``Accept: application/json`` ``{"device_id", "certificate", "chain", "not_after"}``.
- ``POST reenroll-challenge`` and ``POST simplereenroll``: the same, authenticated by the client
  certificate (``request.client_cert``, the proxy's verified identity), never by a user session.
- ``GET cacerts``: certs-only PKCS#7, base64 DER (RFC 7030 4.1.3); ``GET crl``: the issuing CA's
  CRL, PEM, with an ETag (its CRL number) for conditional GETs.

Every refusal is ``{"error": ..., "reason": ...}`` with its status (see :mod:`.refusals`).
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.http import http_date
from django.views.decorators.http import require_GET
from rest_framework import exceptions as drf
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from mtls_proxy.django.enrollment import refusals as E
from mtls_proxy.django.enrollment import service
from mtls_proxy.django.enrollment.conf import get_settings
from mtls_proxy.django.enrollment.issuing import certs_only

PKCS7_CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"


def refusal_response(refusal: E.EnrollmentRefusal, request: HttpRequest | None = None) -> JsonResponse:
    if not refusal.logged:
        where = f"{request.method} {request.path}" if request is not None else "request"
        client_cert = getattr(request, "client_cert", None)
        service.log.warning("%s refused: serial=%s reason=%s status=%d detail=%s", where,
                            client_cert.serial if client_cert else None, refusal.reason, refusal.status,
                            refusal.detail)
    response = JsonResponse(refusal.body(), status=refusal.status)
    if refusal.retry_after is not None:
        response["Retry-After"] = str(refusal.retry_after)
    return response


def _base64_response(der: bytes, content_type: str) -> HttpResponse:
    """RFC 7030 section 4: base64 bodies, announced with Content-Transfer-Encoding."""
    response = HttpResponse(base64.encodebytes(der), content_type=content_type)
    response["Content-Transfer-Encoding"] = "base64"
    return response


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def issuance_response(request: HttpRequest, issuance: service.Issuance) -> HttpResponse:
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({
            "device_id": str(issuance.device.pk),
            "certificate": base64.b64encode(_der(issuance.certificate)).decode("ascii"),
            "chain": [base64.b64encode(_der(c)).decode("ascii") for c in issuance.chain],
            "not_after": issuance.certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }, status=201)
    response = _base64_response(certs_only([issuance.certificate, *issuance.chain]), PKCS7_CERTS_ONLY)
    response.status_code = 201
    return response


def _as_refusal(exc: Exception) -> E.EnrollmentRefusal | None:
    if isinstance(exc, E.EnrollmentRefusal):
        return exc
    if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
        return E.EnrollmentRefusal(E.AUTHENTICATION_REQUIRED, 401, str(exc.detail))
    if isinstance(exc, drf.PermissionDenied):  # e.g. SessionAuthentication's CSRF check
        return E.forbidden(E.FORBIDDEN, str(exc.detail))
    if isinstance(exc, drf.ParseError | drf.UnsupportedMediaType):
        return E.EnrollmentRefusal(E.BAD_REQUEST, exc.status_code, str(exc.detail))
    return None


class _EnrollmentView(APIView):  # type: ignore[misc]
    """JSON in; the view picks the response format (no DRF content negotiation, no 406); refusals as JSON."""

    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]
    permission_classes: list[type] = []

    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple[Any, str]:
        return JSONRenderer(), "application/json"

    def handle_exception(self, exc: Exception) -> HttpResponse:
        refusal = _as_refusal(exc)
        if refusal is None:
            response: HttpResponse = super().handle_exception(exc)
            return response
        return refusal_response(refusal, self.request._request if self.request is not None else None)

    @staticmethod
    def body(request: Request) -> dict[str, Any]:
        data = request.data
        if not isinstance(data, dict):
            raise E.bad_request("the body must be a JSON object")
        return data


class UserAuthenticatedView(_EnrollmentView):
    """Django's own authentication of the app's user (``USER_AUTHENTICATION_CLASSES``), never the certificate."""

    def get_authenticators(self) -> list[Any]:
        return [cls() for cls in get_settings().user_authentication_classes]

    def user(self, request: Request) -> Any:
        user = request.user
        if user is None or not getattr(user, "is_authenticated", False) or getattr(user, "pk", None) is None:
            raise drf.NotAuthenticated("sign in first: a challenge and an enrollment belong to a user")
        return user


class ChallengeView(UserAuthenticatedView):
    def post(self, request: Request) -> HttpResponse:
        raw, expires = service.new_challenge(self.user(request))
        return JsonResponse({"challenge": base64.b64encode(raw).decode("ascii"),
                             "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}, status=201)


class EnrollView(UserAuthenticatedView):
    def post(self, request: Request) -> HttpResponse:
        return issuance_response(request._request, service.enroll(self.user(request), self.body(request)))


class CertificateAuthenticatedView(_EnrollmentView):
    """Authenticated by ``request.client_cert`` (set by ClientCertMiddleware from the proxy's signed identity)."""

    authentication_classes: list[type] = []

    @staticmethod
    def client_cert(request: Request) -> Any:
        return getattr(request._request, "client_cert", None)


class ReenrollChallengeView(CertificateAuthenticatedView):
    def post(self, request: Request) -> HttpResponse:
        device, _ = service.device_for_certificate(self.client_cert(request))
        raw, expires = service.new_challenge(device.user, device)
        return JsonResponse({"challenge": base64.b64encode(raw).decode("ascii"),
                             "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}, status=201)


class ReenrollView(CertificateAuthenticatedView):
    def post(self, request: Request) -> HttpResponse:
        return issuance_response(request._request, service.reenroll(self.client_cert(request), self.body(request)))


@require_GET  # type: ignore[untyped-decorator]
def cacerts(request: HttpRequest) -> HttpResponse:
    conf = get_settings()
    return _base64_response(certs_only([conf.issuing_ca.cert, *conf.ca_chain]), PKCS7_CERTS_ONLY)


@require_GET  # type: ignore[untyped-decorator]
def crl(request: HttpRequest) -> HttpResponse:
    """PEM; ``ETag`` is the CRL number, so a proxy's conditional GET costs a 304 until the next revocation."""
    row = service.current_crl()
    etag = f'"crl-{row.number}"'
    if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(row.pem, content_type="application/x-pem-file")
    response["ETag"] = etag
    response["Last-Modified"] = http_date(row.this_update.timestamp())
    response["Cache-Control"] = "no-cache"  # revalidate each time: a revocation must show at the next fetch
    return response
