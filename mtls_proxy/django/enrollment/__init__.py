"""Device enrollment (issue 11): keys born in the phone's hardware, proven by attestation, certified for days.

A reusable Django app (``mtls_proxy.django.enrollment``, label ``mtls_enrollment``):

- ``POST challenge``: a single-use, short-lived random challenge for a signed-in user;
- ``POST simpleenroll``: PKCS#10 + attestation evidence + challenge -> a certificate for a new device;
- ``POST reenroll-challenge`` / ``POST simplereenroll`` over mTLS: renewal by the current certificate;
- ``GET cacerts`` / ``GET crl``: the issuing CA (certs-only PKCS#7) and its CRL (PEM) for the proxies.

Include ``mtls_proxy.django.enrollment.urls`` (e.g. under ``.well-known/est/``), configure
``settings.MTLS_ENROLLMENT`` (see :mod:`.conf`) and run ``migrate``. docs/enrollment.md has the
flow, the wire formats and where they deviate from RFC 7030.
"""
