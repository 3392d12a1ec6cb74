"""Settings of the demo upstream: the minimum a DRF API behind mtls-proxy needs.

No database (the certificate user is not stored), a random SECRET_KEY per process (nothing
is signed across restarts), and the identity trust mode chosen by the environment the
``serve`` command sets: with a signing key file the signature is required; without one
the demo trusts loopback and Unix-socket peers, as an upstream reachable only by the
proxy may.

The replay store is chosen the same way: with ``MTLS_DEMO_DATABASE`` (a JSON object, the
``DATABASES["default"]`` entry) the nonces go to that database, with
``MTLS_PROXY_REPLAY_STORE=redis`` to ``MTLS_PROXY_REPLAY_REDIS_URL``; otherwise they stay in
the process, which the settings only declare safe (``SINGLE_PROCESS``) when ``serve`` runs
one worker (``MTLS_DEMO_WORKERS``).
"""

from __future__ import annotations

import json
import os
import secrets

SECRET_KEY = secrets.token_urlsafe(50)
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True

INSTALLED_APPS = ["rest_framework", "mtls_proxy.django"]
MIDDLEWARE = [
    "mtls_proxy.demo_app.views.worker_pid_middleware",  # reads no body: ClientCertMiddleware still sees none read
    "mtls_proxy.django.middleware.ClientCertMiddleware",
]
ROOT_URLCONF = "mtls_proxy.demo_app.urls"
ASGI_APPLICATION = "mtls_proxy.demo_app.asgi.application"
_database = os.environ.get("MTLS_DEMO_DATABASE")
DATABASES: dict[str, dict[str, object]] = {"default": json.loads(_database)} if _database else {}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

_signing_key_file = os.environ.get("MTLS_PROXY_SIGNING_KEY_FILE") or None
MTLS_PROXY = {
    "SIGNING_KEY_FILE": _signing_key_file,
    "TRUST": os.environ.get("MTLS_PROXY_TRUST") or ("signature" if _signing_key_file else "trusted-peers"),
    "TRUSTED_PEERS": ["127.0.0.1", "::1", "unix"],
    "REPLAY_STORE": os.environ.get("MTLS_PROXY_REPLAY_STORE") or ("database" if _database else "process"),
    "REPLAY_REDIS_URL": os.environ.get("MTLS_PROXY_REPLAY_REDIS_URL") or None,
    "SINGLE_PROCESS": os.environ.get("MTLS_DEMO_WORKERS", "1") == "1",
    "MAX_AGE": float(os.environ.get("MTLS_PROXY_MAX_AGE") or 10),
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["mtls_proxy.django.authentication.ClientCertAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": None,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
    "loggers": {
        "mtls_proxy": {"handlers": ["stderr"], "level": "WARNING"},
        "django": {"handlers": ["stderr"], "level": "ERROR"},
    },
}
