"""``mtls-proxy demo``: the whole product on one machine, with nothing to prepare.

Makes a throwaway client CA, server and client certificates in a temp dir, starts
the sample Django app (the one the tests use) on a Unix socket and the proxy in
front of it, then shows one request with the client certificate succeeding (and
the identity Django saw) and one without a certificate refused at the handshake.
``--smoke`` does the two checks and exits 0 or 1; otherwise it keeps serving and
prints curl commands to try.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from mtls_proxy.pki import x509 as X

_START_TIMEOUT = 30.0


def _wait_for_line(proc: subprocess.Popen[str], pattern: str, timeout: float) -> re.Match[str]:
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line.rstrip())
        m = rx.search(line)
        if m:
            return m
    tail = "\n".join(seen[-20:])
    raise RuntimeError(f"{proc.args!r}: did not start (no {pattern!r} in its output)\n{tail}")


def _write_pki(root: Path) -> dict[str, Path]:
    ca = X.issue_ca({"CN": "mtls-proxy demo client CA", "O": "Demo"})
    server = X.issue_server("localhost", None, dns=["localhost"], ips=["127.0.0.1"], days=30)
    device = X.issue_client({"CN": "demo-device-1", "O": "Demo"}, ca, days=30)
    files = {
        "ca": (ca.cert_pem(), "client-ca.pem"),
        "server": (server.cert_pem(), "server.pem"),
        "server_key": (server.key_pem(), "server.key"),
        "client": (device.cert_pem(), "client.pem"),
        "client_key": (device.key_pem(), "client.key"),
    }
    out: dict[str, Path] = {}
    for name, (data, filename) in files.items():
        path = root / filename
        path.write_bytes(data)
        path.chmod(0o600)
        out[name] = path
    from mtls_proxy.identity import generate_signing_key

    out["signing_key"] = root / "identity-signing.key"
    out["signing_key"].write_text(generate_signing_key())
    out["signing_key"].chmod(0o600)
    return out


def _request(port: int, ctx: ssl.SSLContext, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _checks(port: int, files: dict[str, Path]) -> bool:
    ok = True
    with_cert = ssl.create_default_context(cafile=str(files["server"]))
    with_cert.load_cert_chain(str(files["client"]), str(files["client_key"]))
    status, body = _request(port, with_cert, "/api/echo")
    seen = json.loads(body).get("client_cert") if status == 200 else None
    if status == 200 and seen and seen.get("common_name") == "demo-device-1":
        print(f"[ok] with the client certificate: HTTP {status}; Django saw the identity:")
        for key in ("subject", "issuer", "serial", "fingerprint", "not_after"):
            print(f"       {key:12} {seen.get(key)}")
    else:
        ok = False
        print(f"[FAIL] with the client certificate: HTTP {status} {body[:200]!r}")
    without_cert = ssl.create_default_context(cafile=str(files["server"]))
    try:
        status, body = _request(port, without_cert, "/api/echo")
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected) as exc:
        print(f"[ok] without a client certificate: refused at the TLS handshake ({type(exc).__name__})")
    else:
        ok = False
        print(f"[FAIL] without a client certificate the request was answered: HTTP {status}")
    return ok


def run_demo(*, smoke: bool = False, port: int = 8443) -> int:
    try:
        import django  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print("mtls-proxy demo needs the sample Django app: pip install 'mtls-proxy[demo]'", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="mtls-proxy-demo-"))
    procs: list[subprocess.Popen[str]] = []
    try:
        files = _write_pki(root)
        sock = root / "django.sock"
        upstream = subprocess.Popen(
            [sys.executable, "-m", "mtls_proxy.demo_app", "serve", "--uds", str(sock),
             "--signing-key-file", str(files["signing_key"])],
            stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )
        procs.append(upstream)
        _wait_for_line(upstream, r"^READY", _START_TIMEOUT)
        config = {
            "listen": f"127.0.0.1:{port}",
            "upstream": f"unix:{sock}",
            "tls": {"cert": str(files["server"]), "key": str(files["server_key"]), "client_ca": str(files["ca"])},
            "identity": {"signing_key_file": str(files["signing_key"])},
            "admin": False,
            "policy": {"rules": [
                {"name": "no-admin", "paths": ["/admin/"], "action": "deny"},
                {"name": "app", "paths": ["/"], "clients": "any"},
            ]},
        }
        config_path = root / "mtls-proxy.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        proxy = subprocess.Popen(
            [sys.executable, "-m", "mtls_proxy", "run", "--config", str(config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
        )
        procs.append(proxy)
        m = _wait_for_line(proxy, r"listening on https://[^:]+:(\d+)", _START_TIMEOUT)
        bound = int(m.group(1))
        print(f"mtls-proxy demo: Django on {sock}, proxy on https://localhost:{bound}, files in {root}")
        ok = _checks(bound, files)
        if smoke:
            print("smoke: " + ("passed" if ok else "FAILED"))
            return 0 if ok else 1
        c = f"--cacert {files['server']}"
        print("\nTry it (Ctrl-C to stop):")
        print(f"  curl {c} --cert {files['client']} --key {files['client_key']} https://localhost:{bound}/api/echo")
        print(f"  curl {c} --cert {files['client']} --key {files['client_key']} https://localhost:{bound}/admin/")
        print(f"  curl {c} https://localhost:{bound}/api/echo   # no client certificate: refused")
        print(f"  config: {config_path}")
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            while proxy.poll() is None:
                line = proxy.stdout.readline() if proxy.stdout else ""
                if line:
                    print(line, end="")
        except KeyboardInterrupt:
            pass
        return 0
    except RuntimeError as exc:
        print(f"mtls-proxy demo: {exc}", file=sys.stderr)
        return 1
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(root, ignore_errors=True)
