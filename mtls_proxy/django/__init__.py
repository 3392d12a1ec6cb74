"""The Django side of mtls-proxy: trust the proxy's client-certificate headers, and only the proxy's.

Add ``mtls_proxy.django`` to ``INSTALLED_APPS`` (the replay store's nonce table and the
system checks), ``mtls_proxy.django.middleware.ClientCertMiddleware`` first in
``MIDDLEWARE`` (it sets ``request.client_cert``), under ASGI wrap the application in
``mtls_proxy.django.asgi.ClientCertASGIMiddleware`` (verification before the body is
read) and, for Django REST framework, use
``mtls_proxy.django.authentication.ClientCertAuthentication``. Settings live in the
``MTLS_PROXY`` dict (see :mod:`mtls_proxy.django.conf`); docs/django.md explains why the
default is to demand a signature that binds the request, and the wire format.
"""
