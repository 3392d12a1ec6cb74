"""gunicorn settings for the test site: each worker announces itself so the test waits for all of them."""

from __future__ import annotations

import os
from typing import Any

worker_class = "sync"
timeout = 60
graceful_timeout = 3
loglevel = "warning"


def post_worker_init(worker: Any) -> None:
    # one write(2) per line: the workers share the pipe, and print() may write the newline apart
    os.write(1, f"WORKER {os.getpid()}\n".encode())
