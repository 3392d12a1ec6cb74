"""The Django side of mtls-proxy: trust the proxy's client-certificate headers, and only the proxy's.

Add ``mtls_proxy.django.middleware.ClientCertMiddleware`` to ``MIDDLEWARE`` (it sets
``request.client_cert``) and, for Django REST framework,
``mtls_proxy.django.authentication.ClientCertAuthentication``. Settings live in the
``MTLS_PROXY`` dict (see :mod:`mtls_proxy.django.conf`); docs/django.md explains why the
default is to demand a signature.
"""
