"""The demo's WSGI application (gunicorn): the same Django, verified by the middleware before the lazy body read."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mtls_proxy.demo_app.settings")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
