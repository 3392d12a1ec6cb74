#!/usr/bin/env python3
"""mtls-proxy vs nginx: the same certificates, upstream and load generator, measured in one run.

    python bench/run.py [--quick] [--out FILE] [--json FILE] [--keep]

What it does (docs/benchmarks.md explains every choice):
- installs what is missing: nginx (Debian), gcc and libssl-dev to build bench/loadgen.c;
- makes a throwaway CA, a server certificate and a client certificate (mtls_proxy.pki.x509);
- starts ONE upstream for both proxies: nginx, 1 worker, on a Unix socket (GET /small -> 200 "ok",
  GET /big -> a file on tmpfs, PUT /upload/blob -> WebDAV PUT into tmpfs);
- starts nginx (1 worker) as an mTLS reverse proxy and mtls-proxy (1 process), both with access logs
  off, both pinned to CPU 1; the load generator and the upstream are pinned to CPU 0;
- measures each metric for nginx and mtls-proxy back to back (alternating the order every round),
  prints a markdown table with the ratio mtls-proxy/nginx, and writes it to --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
LOADGEN_SRC = BENCH / "loadgen.c"
LOADGEN = OUT / "loadgen"
HARNESS_CPU = "0"  # load generator + upstream
PROXY_CPU = "1"  # the proxy under test
CLK_TCK = os.sysconf("SC_CLK_TCK")
NOFILE = 65536

sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class Profile:
    name: str
    rounds: int
    warmup: float
    duration: float
    hs_clients: int
    xfer_bytes: int
    idle_counts: tuple[int, int]
    small_conns: tuple[int, int] = (32, 256)
    fixed_conns: int = 32
    quiet_wait: float = 30.0  # seconds to wait for other jobs to go quiet before a measurement
    retries: int = 2  # redo a measurement during which other jobs used more than max_foreign % of a core
    max_foreign: float = 25.0
    xfer_count: int = 3  # transfers per measurement (one connection, back to back)
    h2_requests: int = 20000  # small GETs over ONE HTTP/2 connection (curl --parallel, bench/h2curl.py)
    h2_streams: int = 100  # concurrent streams on it


QUICK = Profile(
    "quick",
    rounds=1,
    warmup=0.3,
    duration=1.2,
    hs_clients=32,
    xfer_bytes=50_000_000,
    idle_counts=(500, 1000),
    quiet_wait=0,
    retries=0,
    xfer_count=6,
    h2_requests=6000,
)
FULL = Profile(
    "full", rounds=3, warmup=1.0, duration=4.0, hs_clients=32, xfer_bytes=200_000_000, idle_counts=(1000, 10000)
)


# ------------------------------------------------------------------------------------------------------------
# installing what is missing


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0:
        sys.exit(f"bench: {' '.join(packages)} missing and not root: install them (apt-get install -y ...)")
    log(f"installing {' '.join(packages)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Keep apt from starting the system nginx on :80 (a policy-rc.d that says no), unless one exists.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", *packages], check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if made_policy:
            policy.unlink()


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        _apt_install(["nginx"])
        found = shutil.which("nginx") or "/usr/sbin/nginx"
    return found


def build_loadgen() -> Path:
    OUT.mkdir(exist_ok=True)
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return LOADGEN
    missing = []
    if not shutil.which("gcc"):
        missing += ["gcc", "libc6-dev"]
    if not Path("/usr/include/openssl/ssl.h").exists():
        missing.append("libssl-dev")
    if missing:
        _apt_install(missing)
    log("building bench/out/loadgen")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(LOADGEN), str(LOADGEN_SRC), "-lssl", "-lcrypto"], check=True)
    return LOADGEN


def raise_nofile() -> None:
    """ulimit -n for us and everything we start: 65536, or the hard limit when it cannot be raised."""
    global NOFILE
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, max(NOFILE, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    log(f"ulimit -n: {NOFILE}")


def can_pin() -> bool:
    return bool(shutil.which("taskset")) and os.cpu_count() is not None and os.cpu_count() >= 2


PIN = True


def pinned(cpu: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if PIN else cmd


# ------------------------------------------------------------------------------------------------------------
# certificates, files, configs


def make_pki(d: Path) -> dict[str, Path]:
    from mtls_proxy.pki.x509 import issue_ca, issue_client, issue_server

    ca = issue_ca("mtls-bench CA")
    server = issue_server("localhost", ca, dns=["localhost"], ips=["127.0.0.1"])
    client = issue_client({"CN": "bench-device-1", "O": "Bench"}, ca)
    files = {
        "ca": (d / "ca.pem", ca.cert_pem()),
        "server_cert": (d / "server.pem", server.cert_pem()),
        "server_key": (d / "server.key", server.key_pem()),
        "client_cert": (d / "client.pem", client.cert_pem()),
        "client_key": (d / "client.key", client.key_pem()),
    }
    out = {}
    for name, (path, data) in files.items():
        path.write_bytes(data)
        path.chmod(0o600)
        out[name] = path
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NGINX_COMMON = """
user root root;
pid {d}/{name}.pid;
error_log {d}/{name}.error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {wc}; }}
"""

NGINX_TEMP = """
  client_body_temp_path {d}/{name}-body;
  proxy_temp_path {d}/{name}-proxy;
  fastcgi_temp_path {d}/{name}-fastcgi;
  uwsgi_temp_path {d}/{name}-uwsgi;
  scgi_temp_path {d}/{name}-scgi;
"""


def upstream_conf(d: Path) -> str:
    name = "upstream"
    return (
        NGINX_COMMON.format(d=d, name=name, nofile=NOFILE, wc=min(4096, NOFILE // 2))
        + f"""
worker_processes 1;
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  default_type application/octet-stream;
  {NGINX_TEMP.format(d=d, name=name)}
  server {{
    listen unix:{d}/upstream.sock;
    location = /small {{ default_type text/plain; return 200 "ok"; }}
    location = /big {{ alias {d}/big.bin; }}
    location /upload/ {{
      root {d}/www;
      dav_methods PUT;
      client_max_body_size 0;
      client_body_buffer_size 1m;
      client_body_temp_path {d}/www/tmp;
    }}
  }}
}}
"""
    )


def nginx_proxy_conf(d: Path, port: int, certs: dict[str, Path], workers: int, name: str) -> str:
    return (
        NGINX_COMMON.format(d=d, name=name, nofile=NOFILE, wc=NOFILE - 100)
        + f"""
worker_processes {workers};
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  {NGINX_TEMP.format(d=d, name=name)}
  upstream app {{
    server unix:{d}/upstream.sock;
    keepalive 512;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {certs["server_cert"]};
    ssl_certificate_key {certs["server_key"]};
    ssl_client_certificate {certs["ca"]};
    ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets on;
    client_max_body_size 0;

    # the harness ceiling: nginx answering itself, no upstream
    location = /direct-small {{ default_type text/plain; return 200 "ok"; }}
    location = /direct-big {{ alias {d}/big.bin; }}
    location /direct-upload/ {{
      root {d}/www;
      dav_methods PUT;
      client_body_buffer_size 1m;
      client_body_temp_path {d}/www/tmp;
    }}

    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Client-Cert-Subject $ssl_client_s_dn;
      proxy_set_header X-Client-Cert-Issuer $ssl_client_i_dn;
      proxy_set_header X-Client-Cert-Serial $ssl_client_serial;
      proxy_set_header X-Client-Cert-Fingerprint $ssl_client_fingerprint;
      proxy_set_header X-Client-Cert-Not-After $ssl_client_v_end;
      proxy_request_buffering off;
      proxy_buffering off;
      # unbuffered nginx relays through one proxy_buffer_size buffer (default 4k: ~3x slower
      # downloads); 64k is closer to a streaming proxy's read size (uvloop reads up to 256 KiB)
      proxy_buffer_size 64k;
      proxy_buffers 4 64k;
      proxy_busy_buffers_size 128k;
      client_body_buffer_size 64k;  # the same for uploads (default 16k)
    }}
  }}
}}
"""
    )


def mtls_proxy_conf(d: Path, port: int, certs: dict[str, Path]) -> str:
    return f"""listen: 127.0.0.1:{port}
upstream: unix:{d}/upstream.sock
tls:
  cert: {certs["server_cert"]}
  key: {certs["server_key"]}
  client_ca: {certs["ca"]}
  session_tickets: true
policy:
  rules:
    - {{name: bench, paths: ["/"], clients: any}}
limits:
  max_body_size: 1G
  max_connections: 40000
  # the load generator is one address opening hundreds of connections at once (nginx has no such cap)
  max_handshakes: 40000
  max_handshakes_per_address: 40000
  upstream_max_idle: 512
  idle_timeout: 120s
logging:
  level: info
  access_log: false
"""


# ------------------------------------------------------------------------------------------------------------
# processes


class Proc:
    """A process this script started; stopped by its own pid only."""

    def __init__(self, name: str, cmd: list[str], logdir: Path, **kw: Any) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.out"
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT, **kw)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log_file.close()


def children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            out += [int(x) for x in text]
    except OSError:
        pass
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """On-CPU time of these processes (all their threads), from schedstat: nanosecond resolution."""
    total = 0
    for pid in pids:
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def core_busy() -> dict[str, tuple[int, int]]:
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if re.match(r"cpu\d", line):
            parts = line.split()
            vals = [int(x) for x in parts[1:]]
            idle = vals[3] + vals[4]
            out[parts[0][3:]] = (sum(vals) - idle, sum(vals))
    return out


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def unix_ready(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
        return True
    except OSError:
        return False


def tcp_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Target:
    """One proxy under test."""

    key: str  # "nginx" or "mtls"
    label: str
    port: int = 0
    proc: Proc | None = None
    start_fn: Any = None

    def server_pids(self) -> list[int]:
        assert self.proc is not None
        if self.key.startswith("nginx"):
            return children(self.proc.pid)  # the workers
        return [self.proc.pid, *children(self.proc.pid)]  # the process, and its workers if any

    def rss(self) -> int:
        return sum(rss_kib(p) for p in self.server_pids())

    def start(self) -> None:
        self.start_fn(self)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


class Bench:
    def __init__(self, profile: Profile, workdir: Path) -> None:
        self.p = profile
        self.d = workdir
        self.nginx = nginx_binary()
        self.loadgen = build_loadgen()
        self.procs: list[Proc] = []
        # A snapshot of the package: every mtls-proxy started during the run (restarts included) runs
        # the same code, even if the work tree changes meanwhile.
        self.src = workdir / "src"
        shutil.copytree(
            ROOT / "mtls_proxy", self.src / "mtls_proxy", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        self.certs = make_pki(workdir)
        (workdir / "www" / "upload").mkdir(parents=True)
        (workdir / "www" / "direct-upload").mkdir()
        (workdir / "www" / "tmp").mkdir()
        self._make_big_file()
        self.upstream: Proc | None = None
        self.targets: dict[str, Target] = {}
        self.results: dict[str, Any] = {"details": []}
        self.has_workers = (
            "--workers"
            in subprocess.run(
                [sys.executable, "-m", "mtls_proxy", "run", "--help"], capture_output=True, text=True, cwd=self.src
            ).stdout
        )

    def _make_big_file(self) -> None:
        block = os.urandom(1 << 20)
        with open(self.d / "big.bin", "wb") as f:
            left = self.p.xfer_bytes
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n

    # --- processes ---------------------------------------------------------------------------------------
    def _nginx_argv(self, name: str, conf: Path) -> list[str]:
        """One nginx in the foreground with its prefix in the temp dir (the upstream or a proxy)."""
        return [self.nginx, "-e", str(self.d / f"{name}.early.log"), "-p", str(self.d), "-c", str(conf),
                "-g", "daemon off;"]

    def start_upstream(self) -> None:
        conf = self.d / "upstream.conf"
        conf.write_text(upstream_conf(self.d))
        self.upstream = Proc("upstream", pinned(HARNESS_CPU, self._nginx_argv("upstream", conf)), self.d)
        wait_for(lambda: unix_ready(self.d / "upstream.sock"), 10, "the upstream nginx")

    def _start_nginx(self, t: Target, workers: int = 1, cpu: str = PROXY_CPU) -> None:
        t.port = free_port()
        conf = self.d / f"{t.key}.conf"
        conf.write_text(nginx_proxy_conf(self.d, t.port, self.certs, workers, t.key))
        t.proc = Proc(t.key, pinned(cpu, self._nginx_argv(t.key, conf)), self.d)
        wait_for(lambda: tcp_ready(t.port) and len(children(t.proc.pid)) >= workers, 10, t.label)  # type: ignore[union-attr]

    def _start_mtls(self, t: Target, workers: int = 1, cpu: str = PROXY_CPU) -> None:
        conf = self.d / f"{t.key}.yaml"
        conf.write_text(mtls_proxy_conf(self.d, free_port(), self.certs))
        cmd = [sys.executable, "-m", "mtls_proxy", "run", "--config", str(conf)]
        if workers > 1:
            cmd += ["--workers", str(workers)]
        t.proc = Proc(t.key, pinned(cpu, cmd), self.d, cwd=self.src)

        def listening() -> bool:
            if not t.proc.alive():  # type: ignore[union-attr]
                raise RuntimeError(f"mtls-proxy exited: {t.proc.log_path.read_text()[-2000:]}")  # type: ignore[union-attr]
            m = re.search(r"listening on https://127\.0\.0\.1:(\d+)", t.proc.log_path.read_text())  # type: ignore[union-attr]
            if m:
                t.port = int(m.group(1))
            return bool(m)

        wait_for(listening, 30, "mtls-proxy")

    def start_all(self) -> None:
        self.start_upstream()
        self.targets = {
            "nginx": Target("nginx", "nginx", start_fn=self._start_nginx),
            "mtls": Target("mtls", "mtls-proxy", start_fn=self._start_mtls),
        }
        for t in self.targets.values():
            t.start()

    def stop_all(self) -> None:
        for t in self.targets.values():
            t.stop()
        if self.upstream is not None:
            self.upstream.stop()

    # --- load generator ----------------------------------------------------------------------------------
    def loadgen_cmd(self, t: Target, mode: str, *args: str) -> list[str]:
        if mode == "h2":  # HTTP/2 with a client certificate: curl's multiplexed --parallel (h2curl.py)
            return pinned(HARNESS_CPU, [
                sys.executable, str(BENCH / "h2curl.py"), "--port", str(t.port), "--cert",
                str(self.certs["client_cert"]), "--key", str(self.certs["client_key"]), "--cacert",
                str(self.certs["ca"]), *args,
            ])
        return pinned(
            HARNESS_CPU,
            [
                str(self.loadgen),
                mode,
                "--port",
                str(t.port),
                "--cert",
                str(self.certs["client_cert"]),
                "--key",
                str(self.certs["client_key"]),
                *args,
            ],
        )

    def _sample(self, t: Target) -> tuple[float, float, float, dict[str, tuple[int, int]]]:
        up = children(self.upstream.pid) if self.upstream else []
        return time.monotonic(), cpu_seconds(t.server_pids()), cpu_seconds(up), core_busy()

    def wait_quiet(self) -> float:
        """Wait (up to p.quiet_wait s) until the machine is idle apart from us: other jobs share these cores."""
        if self.p.quiet_wait <= 0:
            return 0.0
        deadline = time.monotonic() + self.p.quiet_wait
        while True:
            b0 = core_busy()
            time.sleep(0.4)
            b1 = core_busy()
            busy = sum(b1[c][0] - b0[c][0] for c in b1) / max(1, max(b1[c][1] - b0[c][1] for c in b1))
            if busy < 0.15 or time.monotonic() >= deadline:
                return 100 * busy
            time.sleep(0.6)

    def run(self, t: Target, mode: str, *args: str, label: str = "", timeout: float = 300) -> dict[str, Any]:
        """One load-generator run; redone (up to p.retries times) when other jobs took too much CPU."""
        best: dict[str, Any] | None = None
        for attempt in range(self.p.retries + 1):
            before = self.wait_quiet()
            res = self._run_once(t, mode, *args, timeout=timeout)
            res["idle_before_pct"] = round(before, 1)
            res["attempt"] = attempt + 1
            if best is None or res["foreign_pct"] < best["foreign_pct"]:
                best = res
            if res["foreign_pct"] <= self.p.max_foreign:
                break
            log(
                f"  {t.label} {label}: other jobs used {res['foreign_pct']:.0f}% of a core during the run"
                + ("; redoing" if attempt < self.p.retries else "")
            )
        assert best is not None
        best["target"] = t.key
        best["label"] = label
        self.results["details"].append(best)
        if best.get("errors"):
            log(f"  {t.label} {label}: {best['errors']} errors, last: {best.get('last_error')}")
        return best

    def _run_once(self, t: Target, mode: str, *args: str, timeout: float) -> dict[str, Any]:
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.Popen(
            self.loadgen_cmd(t, mode, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        s0 = s1 = None
        result_line = ""
        deadline = time.monotonic() + timeout
        for line in proc.stdout:
            if line.startswith("MARK start"):
                s0 = self._sample(t)
            elif line.startswith("MARK end"):
                s1 = self._sample(t)
            elif line.startswith("{"):
                result_line = line
            if time.monotonic() > deadline:
                proc.kill()
                break
        _, err = proc.communicate(timeout=30)
        if not result_line or s0 is None or s1 is None:
            raise RuntimeError(f"loadgen {mode} failed (rc {proc.returncode}): {err}")
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        res: dict[str, Any] = json.loads(result_line)
        wall = s1[0] - s0[0]
        proxy_s = s1[1] - s0[1]
        upstream_s = s1[2] - s0[2]
        loadgen_s = res.get("cpu_s") or (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)
        busy_s = {c: (s1[3][c][0] - s0[3][c][0]) / CLK_TCK for c in s1[3]}
        res["window_s"] = round(wall, 3)
        res["server_cpu_s"] = round(proxy_s, 3)
        res["server_cpu_pct"] = round(100 * proxy_s / wall, 1)
        res["upstream_cpu_pct"] = round(100 * upstream_s / wall, 1)
        res["loadgen_cpu_pct"] = round(100 * loadgen_s / wall, 1)
        for c in (HARNESS_CPU, PROXY_CPU):
            res[f"cpu{c}_busy_pct"] = round(100 * busy_s[c] / wall, 1)
        res["foreign_pct"] = round(max(0.0, 100 * (sum(busy_s.values()) - proxy_s - upstream_s - loadgen_s) / wall), 1)
        return res

    def http(self, t: Target, conns: int, rate: float = 0, path: str = "/small", label: str = "") -> dict[str, Any]:
        return self.run(
            t,
            "http",
            "--conns",
            str(conns),
            "--rate",
            f"{rate:.0f}",
            "--path",
            path,
            "--warmup",
            str(self.p.warmup),
            "--duration",
            str(self.p.duration),
            label=label,
        )

    def h2(self, t: Target, label: str) -> dict[str, Any]:
        return self.run(t, "h2", "--requests", str(self.p.h2_requests), "--streams", str(self.p.h2_streams),
                        label=label)

    def handshake(self, t: Target, resume: bool, label: str) -> dict[str, Any]:
        args = ["--conns", str(self.p.hs_clients), "--warmup", str(self.p.warmup), "--duration", str(self.p.duration)]
        if resume:
            args.append("--resume")
        return self.run(t, "handshake", *args, label=label)

    def xfer(self, t: Target, method: str, label: str, direct: bool = False) -> dict[str, Any]:
        args = ["--method", method]
        if method == "PUT":
            args += ["--path", "/direct-upload/blob" if direct else "/upload/blob", "--size", str(self.p.xfer_bytes)]
        else:
            args += ["--path", "/direct-big" if direct else "/big"]
        res = self.run(t, "xfer", *args, "--count", str(self.p.xfer_count), label=label)
        tr = res.get("transfers") or []
        if len(tr) != self.p.xfer_count or any(x["bytes"] != self.p.xfer_bytes for x in tr):
            raise RuntimeError(f"{t.label} {label}: transfer incomplete: {res}")
        res["bytes"] = sum(x["bytes"] for x in tr)
        res["mb_s"] = res["bytes"] / sum(x["seconds"] for x in tr) / 1e6
        return res

    def idle_rss(self, t: Target, n: int) -> dict[str, Any]:
        """Fresh server; warm it; open n connections with one request each; RSS delta / n."""
        t.stop()
        t.start()
        self.run(t, "http", "--conns", "16", "--warmup", "0.1", "--duration", "0.3", label="rss warm-up")
        time.sleep(0.3)
        before = t.rss()
        proc = subprocess.Popen(
            self.loadgen_cmd(t, "idle", "--conns", str(n), "--concurrency", "128"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        time.sleep(0.5)
        after = t.rss()
        proc.stdin.write("done\n")
        proc.stdin.close()
        proc.wait(30)
        res: dict[str, Any] = json.loads(line)
        res.update(target=t.key, label=f"idle {n}", rss_before_kib=before, rss_after_kib=after)
        res["kib_per_conn"] = (after - before) / max(1, res["open"])
        self.results["details"].append(res)
        if res["open"] < n:
            log(f"  {t.label}: only {res['open']}/{n} idle connections opened ({res.get('last_error')})")
        t.stop()
        t.start()
        return res

    # --- the run -----------------------------------------------------------------------------------------
    def order(self, r: int) -> list[Target]:
        ts = [self.targets["nginx"], self.targets["mtls"]]
        return ts if r % 2 == 0 else ts[::-1]

    def measure(self) -> dict[str, Any]:
        p = self.p
        R: dict[str, dict[str, list[float]]] = {"nginx": {}, "mtls": {}}

        def add(t: Target, metric: str, value: float) -> None:
            R[t.key].setdefault(metric, []).append(value)

        def common(t: Target, prefix: str, res: dict[str, Any]) -> None:
            add(t, f"{prefix}_cpu", res["server_cpu_pct"])
            add(t, f"{prefix}_loadgen_cpu", res["loadgen_cpu_pct"])
            add(t, f"{prefix}_cpu0", res[f"cpu{HARNESS_CPU}_busy_pct"])
            add(t, f"{prefix}_foreign", res["foreign_pct"])

        nginx = self.targets["nginx"]
        log("harness ceiling: nginx answering /direct-small itself")
        for c in p.small_conns:
            res = self.http(nginx, c, path="/direct-small", label=f"ceiling {c}")
            add(nginx, f"ceiling_{c}_rps", res["rps"])
            common(nginx, f"ceiling_{c}", res)

        for r in range(p.rounds):
            log(f"round {r + 1}/{p.rounds}: small keep-alive requests")
            for c in p.small_conns:
                for t in self.order(r):
                    res = self.http(t, c, label=f"small {c}")
                    add(t, f"small_{c}_rps", res["rps"])
                    add(t, f"small_{c}_p50", res["p50_ms"])
                    add(t, f"small_{c}_p99", res["p99_ms"])
                    add(t, f"small_{c}_us_req", 1e6 * res["server_cpu_s"] / max(1, res["completed"]))
                    common(t, f"small_{c}", res)

        for r in range(p.rounds):
            log(f"round {r + 1}/{p.rounds}: small requests over HTTP/2 ({p.h2_streams} streams, 1 connection)")
            for t in self.order(r):
                res = self.h2(t, label="h2 small")
                add(t, "h2_rps", res["rps"])
                add(t, "h2_us_req", 1e6 * res["server_cpu_s"] / max(1, res["completed"]))
                common(t, "h2", res)

        peak = {k: max(statistics.median(R[k][f"small_{c}_rps"]) for c in p.small_conns) for k in R}
        fixed_rate = 0.5 * peak["nginx"]
        self.results["fixed_rate"] = fixed_rate
        self.results["own_rates"] = {k: 0.5 * v for k, v in peak.items()}
        for r in range(p.rounds):
            log(f"round {r + 1}/{p.rounds}: fixed rate {fixed_rate:.0f} req/s (50% of nginx's peak), handshakes")
            for t in self.order(r):
                res = self.http(t, p.fixed_conns, rate=fixed_rate, label="fixed 50% nginx peak")
                add(t, "fixed_p50", res["p50_ms"])
                add(t, "fixed_p99", res["p99_ms"])
                add(t, "fixed_achieved", res["rps"])
                common(t, "fixed", res)
            for t in self.order(r):
                own = 0.5 * peak[t.key]
                res = self.http(t, p.fixed_conns, rate=own, label="fixed 50% own peak")
                add(t, "own_p50", res["p50_ms"])
                add(t, "own_p99", res["p99_ms"])
                add(t, "own_achieved", res["rps"])
                common(t, "own", res)
            for resume in (False, True):
                kind = "resumed" if resume else "full"
                for t in self.order(r):
                    res = self.handshake(t, resume, label=f"handshake {kind}")
                    add(t, f"hs_{kind}", res["per_sec"])
                    add(t, f"hs_{kind}_us", 1e6 * res["server_cpu_s"] / max(1, res["handshakes"]))
                    common(t, f"hs_{kind}", res)
                    if resume:
                        add(t, "hs_resumed_reuse_pct", 100 * res["reused"] / max(1, res["handshakes"]))

        for r in range(p.rounds):
            log(f"round {r + 1}/{p.rounds}: {p.xfer_bytes / 1e6:.0f} MB download and upload")
            for method, metric in (("GET", "download"), ("PUT", "upload")):
                for t in self.order(r):
                    res = self.xfer(t, method, label=metric)
                    add(t, metric, res["mb_s"])
                    add(t, f"{metric}_s_gb", res["server_cpu_s"] / (res["bytes"] / 1e9))
                    common(t, metric, res)

        log("transfer ceiling: nginx serving and storing the file itself")
        for method, metric in (("GET", "download"), ("PUT", "upload")):
            res = self.xfer(nginx, method, label=f"ceiling {metric}", direct=True)
            add(nginx, f"ceiling_{metric}", res["mb_s"])
            common(nginx, f"ceiling_{metric}", res)

        for n in p.idle_counts:
            log(f"idle connections: {n}")
            for t in self.order(0):
                res = self.idle_rss(t, n)
                add(t, f"idle_{n}", res["kib_per_conn"])
                add(t, f"idle_{n}_open", res["open"])

        log("2 workers")
        try:
            self.two_workers(R)
        except Exception as exc:
            log(f"2-worker measurement failed: {exc}")
            self.results["two_workers_error"] = str(exc)
        return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in R.items()}

    def two_workers(self, R: dict[str, dict[str, list[float]]]) -> None:
        c = self.p.small_conns[-1]
        extra = []
        t2 = Target("nginx2", "nginx (2 workers)")
        t2.start_fn = lambda t: self._start_nginx(t, workers=2, cpu="0,1")
        extra.append(t2)
        if self.has_workers:
            m2 = Target("mtls2", "mtls-proxy (2 workers)")
            m2.start_fn = lambda t: self._start_mtls(t, workers=2, cpu="0,1")
            extra.append(m2)
        for t in self.targets.values():
            t.stop()  # nothing else on the cores
        try:
            for t in extra:
                t.start()
                try:
                    for _ in range(self.p.rounds):
                        res = self.http(t, c, label=f"2 workers small {c}")
                        R.setdefault(t.key, {}).setdefault("w2_rps", []).append(res["rps"])
                        R[t.key].setdefault("w2_p99", []).append(res["p99_ms"])
                finally:
                    t.stop()
        finally:
            for t in self.targets.values():
                t.start()


# ------------------------------------------------------------------------------------------------------------
# reporting


def code_version(src: Path) -> str:
    """The commit, whether mtls_proxy/ differed from it, and a digest of the snapshot that was measured."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(src.rglob("*.py")):
        h.update(str(f.relative_to(src)).encode() + b"\0" + f.read_bytes())

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "mtls_proxy")
    return f"{head}{' + uncommitted changes in mtls_proxy/' if dirty else ''} (snapshot sha256 {h.hexdigest()[:12]})"


def environment(nginx: str) -> dict[str, str]:
    import ssl
    from importlib import metadata

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    nginx_v = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    m = re.search(r"nginx version: (\S+)", nginx_v)
    built = re.search(r"built with (OpenSSL [^\n()]+)", nginx_v)
    running = re.search(r"running with (OpenSSL [^\n()]+)", nginx_v)

    def ver(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_openssl": ssl.OPENSSL_VERSION,
        "nginx": m.group(1) if m else "?",
        "nginx_openssl": (running or built).group(1).strip() if (running or built) else "?",
        "uvloop": ver("uvloop"),
        "httptools": ver("httptools"),
        "mtls_proxy": ver("mtls-proxy"),
        "loadavg": Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__(),
    }


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + unit


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def report(bench: Bench, med: dict[str, dict[str, float]], env: dict[str, str], elapsed: float) -> str:
    p = bench.p
    n, m = med["nginx"], med["mtls"]
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, metric: str, unit: str = "") -> None:
        a, b = m.get(metric), n.get(metric)
        rows.append((label, fmt(b, unit), fmt(a, unit), ratio(a, b)))

    for c in p.small_conns:
        row(f"small GET, {c} keep-alive conns: req/s ↑", f"small_{c}_rps")
        row(f"small GET, {c} conns: p50 latency ↓", f"small_{c}_p50", " ms")
        row(f"small GET, {c} conns: p99 latency ↓", f"small_{c}_p99", " ms")
    row(f"small GET over HTTP/2, {p.h2_streams} streams on 1 conn (curl): req/s ↑", "h2_rps")
    fr = bench.results["fixed_rate"]
    row(f"p99 at 50% of nginx's peak ({fr:,.0f} req/s, {p.fixed_conns} conns) ↓", "fixed_p99", " ms")
    row("  same run: p50 ↓", "fixed_p50", " ms")
    row("  same run: achieved req/s", "fixed_achieved")
    own = bench.results["own_rates"]
    rows.append(
        (
            f"p99 at 50% of its own peak (nginx {own['nginx']:,.0f}, mtls-proxy {own['mtls']:,.0f} req/s) ↓",
            fmt(n.get("own_p99"), " ms"),
            fmt(m.get("own_p99"), " ms"),
            ratio(m.get("own_p99"), n.get("own_p99")),
        )
    )
    row(f"full TLS 1.3 mTLS handshakes/s ({p.hs_clients} parallel clients) ↑", "hs_full")
    row(f"resumed TLS 1.3 handshakes/s ({p.hs_clients} parallel clients) ↑", "hs_resumed")
    row("  share of 'resumed' handshakes that did resume", "hs_resumed_reuse_pct", " %")
    mb = p.xfer_bytes / 1e6
    row(f"download {mb:.0f} MB, 1 conn: MB/s ↑ (x{p.xfer_count})", "download")
    row(f"upload {mb:.0f} MB, 1 conn: MB/s ↑ (x{p.xfer_count})", "upload")
    for k in p.idle_counts:
        row(f"RSS per idle mTLS conn, {k:,} open ↓", f"idle_{k}", " KiB")
    c = p.small_conns[-1]
    n2 = med.get("nginx2", {}).get("w2_rps")
    m2 = med.get("mtls2", {}).get("w2_rps")
    if "mtls2" not in med and not bench.has_workers:
        rows.append(
            (f"2 workers, small GET, {c} conns: req/s ↑", fmt(n2), "n/a (no --workers yet)", "n/a (no --workers yet)")
        )
    else:
        rows.append((f"2 workers, small GET, {c} conns: req/s ↑", fmt(n2), fmt(m2), ratio(m2, n2)))
    rows.append(("**proxy CPU time per unit of work** (robust to other jobs on the machine)", "", "", ""))
    for c in p.small_conns:
        row(f"CPU per small request, {c} conns ↓", f"small_{c}_us_req", " µs")
    row("CPU per small request over HTTP/2 ↓", "h2_us_req", " µs")
    row("CPU per full handshake ↓", "hs_full_us", " µs")
    row("CPU per resumed handshake ↓", "hs_resumed_us", " µs")
    row("CPU per GB downloaded ↓", "download_s_gb", " s")
    row("CPU per GB uploaded ↓", "upload_s_gb", " s")

    out = [
        "| metric (↑ higher is better, ↓ lower is better) | nginx | mtls-proxy | mtls-proxy/nginx |",
        "| --- | ---: | ---: | ---: |",
    ]
    out += [f"| {a} | {b} | {c_} | {d} |" for a, b, c_, d in rows]
    table = "\n".join(out)

    diag = [
        f"| run | proxy CPU | load generator CPU | CPU {HARNESS_CPU} busy (load generator + upstream) "
        f"| other jobs (% of a core) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]

    def drow(label: str, prefix: str, who: dict[str, float]) -> None:
        if f"{prefix}_cpu" not in who:
            return
        diag.append(
            f"| {label} | {fmt(who.get(prefix + '_cpu'), ' %')} | {fmt(who.get(prefix + '_loadgen_cpu'), ' %')} "
            f"| {fmt(who.get(prefix + '_cpu0'), ' %')} | {fmt(who.get(prefix + '_foreign'), ' %')} |"
        )

    for c in p.small_conns:
        diag.append(
            f"| **harness ceiling**: nginx answering itself, {c} conns: "
            f"{fmt(n.get(f'ceiling_{c}_rps'))} req/s | | | | |"
        )
        drow("  (that run)", f"ceiling_{c}", n)
    for k in ("download", "upload"):
        diag.append(f"| **harness ceiling**: nginx {k}ing the file itself: {fmt(n.get(f'ceiling_{k}'))} MB/s | | | | |")
        drow("  (that run)", f"ceiling_{k}", n)
    for key, who in (("nginx", n), ("mtls-proxy", m)):
        for c in p.small_conns:
            drow(f"{key}: small {c} conns", f"small_{c}", who)
        drow(f"{key}: HTTP/2 small", "h2", who)
        drow(f"{key}: fixed rate (50% of nginx's peak)", "fixed", who)
        drow(f"{key}: fixed rate (50% of own peak)", "own", who)
        drow(f"{key}: full handshakes", "hs_full", who)
        drow(f"{key}: resumed handshakes", "hs_resumed", who)
        drow(f"{key}: download", "download", who)
        drow(f"{key}: upload", "upload", who)
    for k in p.idle_counts:
        diag.append(
            f"| idle connections actually open (of {k:,}): nginx {fmt(n.get(f'idle_{k}_open'))}, "
            f"mtls-proxy {fmt(m.get(f'idle_{k}_open'))} | | | | |"
        )
    tls = next((d.get("tls") for d in bench.results["details"] if d.get("tls")), "?")
    redone = sum(1 for d in bench.results["details"] if d.get("attempt", 1) > 1)

    env_lines = "\n".join(f"- {k}: {v}" for k, v in env.items())
    return (
        f"## Results ({p.name} mode, {p.rounds} round(s), median; {elapsed:.0f} s)\n\n{table}\n\n"
        f"Diagnostics, medians (is anything but the proxy the bottleneck? CPU % of one core, over the "
        f"measured window):\n\n" + "\n".join(diag) + "\n\n"
        f"Negotiated: {tls}. Errors seen by the load generator: "
        f"{sum(int(d.get('errors', 0)) for d in bench.results['details'])}. Runs redone because other jobs "
        f"were busy: {redone}.\n\n"
        f"Machine and versions:\n\n{env_lines}\n"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts, under a minute")
    ap.add_argument("--out", help="also write the markdown report here")
    ap.add_argument("--json", help="write every raw measurement here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    args = ap.parse_args()
    global PIN
    PIN = can_pin() and not args.no_pin
    profile = QUICK if args.quick else FULL
    started = time.monotonic()
    raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="mtls-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    bench = Bench(profile, workdir)
    env = environment(bench.nginx)
    env["code"] = code_version(bench.src)
    log(f"workdir {workdir}; load {env['loadavg']}; pinning {'on' if PIN else 'off'}")
    try:
        bench.start_all()
        med = bench.measure()
    finally:
        bench.stop_all()
        warnings = {}
        for name in ("mtls", "nginx"):
            path = workdir / f"{name}.out"
            if path.exists():
                text = path.read_text(errors="replace")
                warnings[name] = sum(
                    1 for ln in text.splitlines() if "WARNING" in ln or "[warn]" in ln or "ERROR" in ln
                )
        if warnings.get("mtls"):
            log(f"mtls-proxy logged {warnings['mtls']} warning/error line(s): see {workdir}/mtls.out")
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(bench, med, env, time.monotonic() - started)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": med, **bench.results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
