"""The admin listener: plain HTTP on a separate, private address (default 127.0.0.1:9900).

- ``/healthz``: the process is up and its event loop answers (liveness).
- ``/readyz``: 200 only when every check holds, else 503; the JSON body lists them:
  ``config_loaded`` (a state is loaded), ``listening`` (accepting, not draining),
  ``workers`` (all workers up, multi-process mode) and ``upstream`` (a connection to
  the upstream opens within 1 s).
- ``/metrics``: Prometheus text format, summed over all workers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from mtls_proxy import metrics
from mtls_proxy.config import ListenAddress, UpstreamSettings

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


async def upstream_reachable(upstream: UpstreamSettings, timeout: float = 1.0) -> bool:
    try:
        async with asyncio.timeout(timeout):
            if upstream.unix_path is not None:
                _, writer = await asyncio.open_unix_connection(upstream.unix_path)
            else:
                _, writer = await asyncio.open_connection(upstream.host, upstream.port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def build_admin_app(readiness: ReadinessCheck) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        checks = await readiness()
        ready = all(checks.values())
        body = json.dumps({"ready": ready, "checks": checks}) + "\n"
        return web.Response(text=body, status=200 if ready else 503, content_type="application/json")

    async def metrics_view(request: web.Request) -> web.Response:
        data = await asyncio.get_running_loop().run_in_executor(None, metrics.render)
        return web.Response(body=data, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app


async def start_admin(address: ListenAddress, readiness: ReadinessCheck) -> web.AppRunner:
    runner = web.AppRunner(build_admin_app(readiness), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, address.host, address.port, reuse_address=True)
    await site.start()
    return runner
