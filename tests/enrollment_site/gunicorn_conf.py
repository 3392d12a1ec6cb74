"""gunicorn settings for the test site: each worker announces itself so the test waits for all of them."""

from __future__ import annotations

import os
from typing import Any

worker_class = "sync"
timeout = 60
graceful_timeout = 3
loglevel = "warning"


def post_worker_init(worker: Any) -> None:
    print(f"WORKER {os.getpid()}", flush=True)
