"""``python -m mtls_proxy.demo_app serve``: run the demo upstream under uvicorn or gunicorn.

Prints ``PORT <n>`` (TCP only, useful with ``--port 0``) and then ``READY`` on stdout once
the socket accepts connections, so a parent process (the ``demo`` command, the tests)
waits for a line instead of polling. With ``--workers N`` (N > 1, or ``--server gunicorn``)
every worker process prints ``WORKER <pid>`` once it serves; a parent waits for N of them.
With a database configured (``MTLS_DEMO_DATABASE``) the migrations run first, once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mtls_proxy.demo_app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the demo Django API")
    where = serve.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int, help="TCP port (0: pick a free one, printed as 'PORT <n>')")
    where.add_argument("--uds", help="Unix socket path")
    serve.add_argument("--host", default="127.0.0.1", help="TCP address (default 127.0.0.1)")
    serve.add_argument("--signing-key-file", help="identity signing key shared with the proxy")
    serve.add_argument(
        "--trust", choices=("signature", "trusted-peers"),
        help="identity trust mode (default: signature with a key file, else trusted-peers)",
    )
    serve.add_argument("--server", choices=("uvicorn", "gunicorn"), default="uvicorn",
                       help="uvicorn (ASGI, default) or gunicorn sync workers (WSGI)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    return parser


def _migrate() -> None:
    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    if settings.DATABASES:
        from django.db import connections

        call_command("migrate", verbosity=0, interactive=False)
        connections.close_all()  # forked workers must not share the parent's database connection


def _serve_workers(args: argparse.Namespace) -> int:
    """uvicorn's process supervisor with N workers (they share the socket the parent binds)."""
    import uvicorn

    if args.uds is None and not args.port:
        raise SystemExit("--workers > 1 needs --uds or a fixed --port")
    uvicorn.run(
        "mtls_proxy.demo_app.asgi:application", host=args.host, port=args.port or 8000, uds=args.uds,
        workers=args.workers, timeout_keep_alive=30, timeout_graceful_shutdown=3, log_level="warning",
        lifespan="on",
    )
    return 0


def _serve_gunicorn(args: argparse.Namespace) -> int:
    """gunicorn sync workers: the classic WSGI deployment (a body is read only when the view reads it)."""
    from typing import Any

    from gunicorn.app.base import BaseApplication

    def when_ready(server: Any) -> None:
        if args.uds is None:
            print(f"PORT {server.LISTENERS[0].sock.getsockname()[1]}", flush=True)
        print("READY", flush=True)

    def post_worker_init(worker: Any) -> None:
        os.write(1, f"WORKER {os.getpid()}\n".encode())  # one write: workers share the pipe

    options = {
        "bind": [f"unix:{args.uds}" if args.uds else f"{args.host}:{args.port}"],
        "workers": args.workers, "worker_class": "sync", "timeout": 120, "graceful_timeout": 3,
        "loglevel": "warning", "when_ready": when_ready, "post_worker_init": post_worker_init,
    }

    class Demo(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from mtls_proxy.demo_app.wsgi import application

            return application

    Demo().run()
    return 0


async def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from mtls_proxy.demo_app.asgi import application

    config = uvicorn.Config(
        application,
        host=args.host,
        port=args.port if args.port is not None else 8000,
        uds=args.uds,
        workers=1,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=3,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            return 1
        await asyncio.sleep(0.01)
    if args.uds is None:
        port = server.servers[0].sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
    print("READY", flush=True)
    await task
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Django reads these when settings load, which happens inside _serve.
    if args.signing_key_file:
        os.environ["MTLS_PROXY_SIGNING_KEY_FILE"] = os.path.abspath(args.signing_key_file)
    if args.trust:
        os.environ["MTLS_PROXY_TRUST"] = args.trust
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mtls_proxy.demo_app.settings")
    os.environ["MTLS_DEMO_WORKERS"] = str(args.workers)
    _migrate()
    if args.server == "gunicorn":
        return _serve_gunicorn(args)
    if args.workers > 1:
        return _serve_workers(args)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
