"""The enrollment test site (tests/enrollment_site) under gunicorn with several workers, on a real database.

``migrate`` and the users are made by ``python -m django`` in a subprocess with the same
environment, then ``gunicorn -w N``; ready means every worker printed ``WORKER <pid>``. Requests
are plain ``http.client`` calls to 127.0.0.1 (what the proxy would forward), identity headers
made by the real :class:`~mtls_proxy.identity.IdentityEncoder`.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.proxy import free_port

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = "tests.enrollment_site.settings"


def site_env(database: dict[str, Any], enrollment: dict[str, Any] | None, signing_key_file: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DJANGO_SETTINGS_MODULE": SETTINGS,
           "MTLS_TEST_DATABASE": json.dumps(database), "MTLS_TEST_SIGNING_KEY_FILE": str(signing_key_file)}
    env.pop("MTLS_TEST_ENROLLMENT", None)
    if enrollment is not None:
        env["MTLS_TEST_ENROLLMENT"] = json.dumps(enrollment)
    return env


def django_command(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "django", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class EnrollmentSite:
    process: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]
    stderr_path: Path
    worker_pids: list[int] = field(default_factory=list)

    def request(self, method: str, path: str, body: bytes | None = None, headers: Any = (),
                *, user: tuple[str, str] | None = None) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if user is not None:
                conn.putheader("Authorization", "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode())
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        return django_command(self.env, *args)

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_enrollment_site(tmp_path: Path, *, database: dict[str, Any], enrollment: dict[str, Any],
                          signing_key_file: Path, users: list[tuple[str, str]], workers: int = 3,
                          superuser: tuple[str, str] | None = None) -> EnrollmentSite:
    env = site_env(database, enrollment, signing_key_file)
    for args in (("migrate", "--noinput", "-v", "0"), ("check", "--fail-level", "ERROR")):
        done = django_command(env, *args)
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr[-4000:]}")
    script = ("from django.contrib.auth import get_user_model\nU = get_user_model()\n"
              f"for name, pw in {users!r}:\n    U.objects.create_user(name, password=pw)\n")
    if superuser:
        script += f"U.objects.create_superuser({superuser[0]!r}, password={superuser[1]!r})\n"
    done = django_command(env, "shell", "-c", script)
    if done.returncode != 0:
        raise RuntimeError(f"creating users failed:\n{done.stderr[-4000:]}")
    port = free_port()
    stderr_path = tmp_path / "gunicorn.stderr"
    with open(stderr_path, "wb") as stderr_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "tests/enrollment_site/gunicorn_conf.py"),
             "-w", str(workers), "-b", f"127.0.0.1:{port}", "tests.enrollment_site.wsgi:application"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr_file, start_new_session=True)
    site = EnrollmentSite(process, port, env, stderr_path)
    ready = threading.Event()

    def drain() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("WORKER "):
                site.worker_pids.append(int(line.split()[1]))
                if len(site.worker_pids) == workers:
                    ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(60) or len(site.worker_pids) != workers or process.poll() is not None:
        site.stop()
        raise RuntimeError(f"gunicorn did not start:\n{site.stderr_text()[-4000:]}")
    return site
