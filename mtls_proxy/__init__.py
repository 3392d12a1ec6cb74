"""mtls-proxy: a mutual-TLS reverse proxy that lets only your own app reach your Django API."""

__version__ = "0.1.0"
