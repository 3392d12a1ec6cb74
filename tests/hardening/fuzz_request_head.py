"""Atheris harness for the request head: the path normaliser and the proxy's head handling.

Each input is tried as (1) a raw request-target for ``paths.normalize_path``, and (2) as bytes
on a client connection (alone, after a valid request line, and as the target of a request),
through the real llhttp parser (httptools) and the proxy's real judging (HeadJudge: a real
judge(), RuntimeState and verified peer, no sockets). Any exception escaping, or an
allowed request that breaks an invariant, is a finding.

    python tests/hardening/fuzz_request_head.py -max_total_time=20 [corpus_dir ...]

(tests/hardening/test_atheris.py runs it for a bounded time in CI.)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import atheris

with atheris.instrument_imports(include=["mtls_proxy"]):
    import mtls_proxy.exchange.forwarding
    import mtls_proxy.http1
    import mtls_proxy.identity
    import mtls_proxy.judging
    import mtls_proxy.paths
    import mtls_proxy.policy  # noqa: F401

from mtls_proxy.paths import AmbiguousPath, normalize_path
from tests.hardening.headjudge import HeadJudge

JUDGE = HeadJudge(Path(tempfile.mkdtemp(prefix="fuzz-head-")))
PREFIX = b"GET /api/echo HTTP/1.1\r\nHost: localhost\r\n"


def _check_path(raw: bytes) -> None:
    try:
        out = normalize_path(raw)
    except AmbiguousPath:
        return
    if not out.startswith("/") or "//" in out or "/../" in out or "/./" in out:
        raise AssertionError(f"not a normal form: {raw!r} -> {out!r}")
    again = normalize_path(quote(out, safe="/").encode("ascii"))
    if again != out:
        raise AssertionError(f"not idempotent: {raw!r} -> {out!r} -> {again!r}")


def _check_stream(stream: bytes) -> None:
    judged = JUDGE.judge(stream)
    for ex in judged.exchanges:
        if ex.refusal is not None:
            if ex.upstream_head:
                raise AssertionError("a refused request has an upstream head")
            continue
        path = normalize_path(ex.target.partition(b"?")[0])
        if path == "/admin" or path.startswith("/admin/"):
            raise AssertionError(f"admin allowed: {ex.target!r}")
        head = ex.upstream_head
        if not head.startswith(ex.method + b" " + ex.target + b" HTTP/1.1\r\n") or not head.endswith(b"\r\n\r\n"):
            raise AssertionError(f"bad upstream head {head[:200]!r}")
        names = [ln.split(b":", 1)[0].lower().replace(b"_", b"-") for ln in head.split(b"\r\n")[1:] if ln]
        if names.count(b"x-client-cert-subject") != 1 or names.count(b"x-client-cert-signature") != 1:
            raise AssertionError(f"identity headers not exactly the proxy's: {head[:400]!r}")
        if names.count(b"content-length") + names.count(b"transfer-encoding") > 1:
            raise AssertionError(f"two framings upstream: {head[:400]!r}")
        for line in head.split(b"\r\n")[1:-2]:
            if b"\r" in line or b"\n" in line or b"\x00" in line or not line or b":" not in line:
                raise AssertionError(f"bad header line upstream: {line!r}")


def TestOneInput(data: bytes) -> None:
    _check_path(data)
    _check_path(b"/" + data)
    _check_stream(data)
    _check_stream(PREFIX + data)
    target = data.split(b" ", 1)[0].split(b"\r", 1)[0].split(b"\n", 1)[0]
    _check_stream(b"GET /" + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
