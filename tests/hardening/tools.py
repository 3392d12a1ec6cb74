"""Third-party test tools that must not share the project's virtual environment.

sslyze pins ``cryptography<47`` while the project runs a newer one, so it gets a virtual
environment of its own, created on first use (from PyPI, with the ordinary pip client) in a
cache directory outside the work tree and reused afterwards. If it cannot be installed the
caller skips with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("MTLS_PROXY_TEST_TOOLS", Path.home() / ".cache" / "mtls-proxy-test-tools"))


class ToolUnavailable(Exception):
    pass


def tool_python(name: str, requirement: str, module: str, timeout: float = 240.0) -> Path:
    """The python of a venv named ``name`` in which ``module`` imports (installing ``requirement`` if needed)."""
    venv = CACHE / name
    python = venv / "bin" / "python"
    check = [str(python), "-c", f"import {module}"]
    if python.exists() and subprocess.run(check, capture_output=True, timeout=60).returncode == 0:
        return python
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                       timeout=120)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement],
                       check=True, capture_output=True, timeout=timeout)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        out = getattr(exc, "stderr", b"") or b""
        raise ToolUnavailable(f"cannot install {requirement}: {exc} {out.decode(errors='replace')[-500:]}") from exc
    if subprocess.run(check, capture_output=True, timeout=60).returncode != 0:
        raise ToolUnavailable(f"{module} does not import after installing {requirement}")
    return python
