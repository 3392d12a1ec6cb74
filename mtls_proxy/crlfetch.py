"""CRLs published at a URL (the enrollment service's, typically): fetched, verified, swapped like a reload.

A ``tls.crl`` entry that is an ``http://`` or ``https://`` URL is fetched at start-up (a start
without it fails, as a missing CRL file would) and then every ``tls.crl_refresh`` with a
conditional GET (``If-None-Match`` / ``If-Modified-Since``). A new body is verified like a CRL file
(signed by a configured client CA, not expired: :func:`mtls_proxy.state.build_state`) and the
whole state is rebuilt, so the change reaches open connections at once. A failed fetch keeps the
CRL already held; once that one's nextUpdate passes, its issuer's clients are refused
(``crl_expired``): fail closed.

The fetch is blocking (``urllib``) and runs off the event loop. Bodies may be PEM or DER.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

#: largest CRL accepted (a CRL of 100,000 revoked serials is ~4 MB)
MAX_CRL_BYTES = 16 * 1024 * 1024


class CrlFetchError(Exception):
    """A CRL URL could not be fetched or did not hold a CRL; ``url`` names it."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(f"{url}: {message}")
        self.url = url


@dataclass(frozen=True)
class FetchedCrl:
    url: str
    pem: bytes
    etag: str | None
    last_modified: str | None
    fetched_at: float


def _as_pem(url: str, body: bytes) -> bytes:
    try:
        is_pem = body.lstrip().startswith(b"-----BEGIN")
        crl = x509.load_pem_x509_crl(body) if is_pem else x509.load_der_x509_crl(body)
    except ValueError as exc:
        raise CrlFetchError(url, f"not a CRL ({exc})") from None
    return crl.public_bytes(Encoding.PEM)


class CrlCache:
    """The last good copy of each CRL URL, refreshed with conditional GETs. Thread-safe."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._held: dict[str, FetchedCrl] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> FetchedCrl | None:
        with self._lock:
            return self._held.get(url)

    def fetch(self, url: str) -> bool:
        """Fetch ``url`` once; True when its CRL changed. Raises :class:`CrlFetchError` (the old copy stays)."""
        held = self.get(url)
        request = urllib.request.Request(url, headers={"Accept": "application/pkix-crl, application/x-pem-file"})
        if held is not None:
            if held.etag:
                request.add_header("If-None-Match", held.etag)
            if held.last_modified:
                request.add_header("If-Modified-Since", held.last_modified)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                body = resp.read(MAX_CRL_BYTES + 1)
                etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        except urllib.error.HTTPError as exc:
            if exc.code == 304 and held is not None:
                with self._lock:
                    self._held[url] = FetchedCrl(url, held.pem, held.etag, held.last_modified, time.time())
                return False
            raise CrlFetchError(url, f"HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise CrlFetchError(url, f"fetch failed: {getattr(exc, 'reason', exc)}") from None
        if len(body) > MAX_CRL_BYTES:
            raise CrlFetchError(url, f"larger than {MAX_CRL_BYTES} bytes")
        pem = _as_pem(url, body)
        changed = held is None or held.pem != pem
        with self._lock:
            self._held[url] = FetchedCrl(url, pem, etag, modified, time.time())
        return changed

    def ensure(self, urls: Iterable[str]) -> dict[str, bytes]:
        """The PEM of every URL, fetching those never fetched (start-up, reload)."""
        out: dict[str, bytes] = {}
        for url in urls:
            held = self.get(url)
            if held is None:
                self.fetch(url)
                held = self.get(url)
            assert held is not None
            out[url] = held.pem
        return out
