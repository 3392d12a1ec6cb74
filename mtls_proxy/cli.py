"""The ``mtls-proxy`` command: run, check, demo, pki, attest. The only place that decides exit codes."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mtls_proxy import __version__
from mtls_proxy.attestation.cli import add_attest_parser, run_attest
from mtls_proxy.errors import ConfigError
from mtls_proxy.pki.cli import add_pki_parser, run_pki

if TYPE_CHECKING:
    from mtls_proxy.state import RuntimeState


def _event_loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return None
    return uvloop.Loop


def _workers(value: str) -> int:
    if value == "auto":
        return len(os.sched_getaffinity(0)) or 1  # the CPUs this process may run on, not the host's
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("--workers must be at least 1 (or 'auto')")
    return n


def cmd_run(args: argparse.Namespace) -> int:
    if args.worker_fds is None and args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # before mtls_proxy.metrics is imported: workers then write their values where the parent sums them
        metrics_dir = tempfile.mkdtemp(prefix="mtls-proxy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        try:
            return _cmd_run(args)
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return _cmd_run(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from mtls_proxy.logs import setup_logging
    from mtls_proxy.state import load_state

    try:
        state = load_state(args.config, time.time())
    except ConfigError as exc:
        print(f"mtls-proxy: {exc.render()}", file=sys.stderr)
        return 1
    setup_logging(state.settings.logging, args.log_format, args.worker_index)
    factory = _event_loop_factory()
    runner = asyncio.Runner(loop_factory=factory) if factory else asyncio.Runner()
    with runner:
        try:
            if args.worker_fds is not None:
                return runner.run(_run_worker(args, state))
            if args.workers > 1:
                from mtls_proxy.supervisor import Supervisor

                return runner.run(Supervisor(args.config, state, args.workers, watch=args.watch or
                                             state.settings.reload.watch, log_format=args.log_format).run())
            from mtls_proxy.server import run_server

            runner.run(run_server(args.config, state, watch=args.watch or None))
        except OSError as exc:
            print(f"mtls-proxy: cannot listen: {exc}", file=sys.stderr)
            return 1
    return 0


def _exit_with_parent() -> None:
    """Linux: SIGTERM this worker when the supervisor dies, even by SIGKILL (no orphans left serving)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


async def _run_worker(args: argparse.Namespace, state: RuntimeState) -> int:
    """A worker of the supervisor: inherited listeners, readiness on a pipe, no admin or watch of its own."""
    import socket

    from mtls_proxy.server import run_server

    _exit_with_parent()
    sockets = [socket.socket(fileno=int(fd)) for fd in args.worker_fds.split(",")]
    for sock in sockets:
        # inherited blocking: uvloop would then keep the listener open after drain's close() (new
        # connections queued and reset instead of refused); asyncio's loop would block in accept()
        sock.setblocking(False)

    def ready() -> None:
        os.write(args.ready_fd, b"1")
        os.close(args.ready_fd)

    await run_server(args.config, state, sockets, admin=False, watch=False, on_ready=ready, worker=True)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 1 on any problem; warnings (a config that loads but surprises) go to stderr, exit 0."""
    import datetime as dt

    from mtls_proxy.certs import load_certificates
    from mtls_proxy.diagnose import TrustMaterial, judge_client_cert, trust_notes
    from mtls_proxy.policy_check import unreachable_denies
    from mtls_proxy.state import load_state

    try:
        state = load_state(args.config, time.time())
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    for warning in unreachable_denies(state.policy):
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    s = state.settings
    revoked = len(state.trust.revoked)
    print(
        f"{args.config}: OK: listen {', '.join(str(a) for a in s.listen)}; upstream {s.upstream.url}; "
        f"{len(s.tls.client_ca)} client CA file(s); {len(state.trust.pinned)} pinned client "
        f"certificate(s); {len(s.tls.crl)} CRL(s) with {revoked} revoked; {len(s.policy.rules)} rule(s)"
    )
    material = TrustMaterial.read(s)
    now = dt.datetime.now(dt.UTC)
    for note in trust_notes(s, material, now):
        print(f"note: {note}")
    if args.client_cert is None:
        return 0
    try:
        cert = load_certificates(Path(args.client_cert).read_bytes())[0]
    except (OSError, ValueError) as exc:
        print(f"{args.client_cert}: cannot read a certificate ({exc})", file=sys.stderr)
        return 1
    accepted, reasons = judge_client_cert(s, material, cert, now)
    print(f"{args.client_cert}: {'ACCEPTED' if accepted else 'REFUSED'}: {cert.subject.rfc4514_string()}")
    for reason in reasons:
        print(f"  {reason}")
    return 0 if accepted else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from mtls_proxy.demo import run_demo

    return run_demo(smoke=args.smoke, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtls-proxy",
        description="A mutual-TLS reverse proxy that lets only your own app reach your Django API.",
    )
    parser.add_argument("--version", action="version", version=f"mtls-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve with a config file")
    run.add_argument("--config", "-c", required=True, help="YAML config file")
    run.add_argument("--workers", type=_workers, default=1,
                     help="worker processes sharing the listeners (default 1; 'auto' = one per core)")
    run.add_argument("--watch", action="store_true",
                     help="reload when the config, certificate, key, CA, CRL or signing-key files change")
    run.add_argument("--log-format", choices=("text", "json"), help="override logging.format")
    run.add_argument("--worker-fds", help=argparse.SUPPRESS)
    run.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a config file and everything it names, then exit")
    check.add_argument("--config", "-c", required=True, help="YAML config file")
    check.add_argument("--client-cert", metavar="CERT",
                       help="also judge this client certificate (PEM or DER): exit 1 if the proxy would refuse it")
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser("demo", help="throwaway PKI + sample Django app + proxy, on this machine")
    demo.add_argument("--smoke", action="store_true", help="run the two checks and exit 0 or 1")
    demo.add_argument("--port", type=int, default=8443, help="proxy port (default 8443; 0 picks a free one)")
    demo.set_defaults(func=cmd_demo)

    add_pki_parser(sub)
    sub.choices["pki"].set_defaults(func=run_pki)
    add_attest_parser(sub)
    sub.choices["attest"].set_defaults(func=run_attest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
