"""A small Django project used as the real upstream by ``mtls-proxy demo`` and by the tests.

It stands for "your unchanged Django API": it uses the public Django integration
(:mod:`mtls_proxy.django`) exactly as a real project would, and its views expose what
Django actually received (paths, headers, body hashes, the verified certificate), so
tests can assert on the far side of the proxy instead of on the proxy's intentions.
Run it with ``python -m mtls_proxy.demo_app serve (--host H --port P | --uds PATH)``.
"""
