"""The README's first command, for real: a fresh virtualenv, `pip install .[demo]`, `mtls-proxy demo --smoke`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_smoke_in_a_fresh_virtualenv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{ROOT}[demo]"],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    demo = subprocess.run([str(venv / "bin" / "mtls-proxy"), "demo", "--smoke", "--port", "0"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "[ok] with the client certificate: HTTP 200" in demo.stdout
    assert "[ok] without a client certificate: refused at the TLS handshake" in demo.stdout
    assert demo.stdout.rstrip().endswith("smoke: passed")
