"""A Django project that uses the enrollment app as a customer would: users, sessions, tokens, admin.

The tests configure it through the environment (tests/support/enrollment_site.py):
``MTLS_TEST_DATABASE`` (JSON: the ``default`` database), ``MTLS_TEST_ENROLLMENT`` (JSON: the
``MTLS_ENROLLMENT`` dict, with the test attestation roots) and ``MTLS_TEST_SIGNING_KEY_FILE``
(the proxy's identity key: renewal is authenticated by the signed client certificate).
"""

from __future__ import annotations

import json
import os

SECRET_KEY = "enrollment-test-site-" + "x" * 40
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "rest_framework",
    "rest_framework.authtoken",
    "mtls_proxy.django",
    "mtls_proxy.django.enrollment",
]
MIDDLEWARE = [
    "mtls_proxy.django.middleware.ClientCertMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.enrollment_site.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": ["django.template.context_processors.request",
                                       "django.contrib.auth.context_processors.auth",
                                       "django.contrib.messages.context_processors.messages"]},
}]
DATABASES = {"default": json.loads(os.environ.get("MTLS_TEST_DATABASE", '{"ENGINE": "django.db.backends.sqlite3", '
                                                                          '"NAME": ":memory:"}'))}
MTLS_PROXY = {"SIGNING_KEY_FILE": os.environ.get("MTLS_TEST_SIGNING_KEY_FILE"), "REPLAY_STORE": "database",
              "USER_RESOLVER": "mtls_proxy.django.enrollment.resolvers.enrolled_user"}
if os.environ.get("MTLS_TEST_ENROLLMENT"):
    MTLS_ENROLLMENT = json.loads(os.environ["MTLS_TEST_ENROLLMENT"])

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["mtls_proxy.django.authentication.ClientCertAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "UNAUTHENTICATED_USER": None,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                            "formatter": "plain"}},
    "formatters": {"plain": {"format": "%(levelname)s %(name)s %(message)s"}},
    "loggers": {
        "mtls_proxy": {"handlers": ["stderr"], "level": "INFO"},
        "django": {"handlers": ["stderr"], "level": "ERROR"},
    },
}
