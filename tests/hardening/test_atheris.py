"""Run the atheris harness (fuzz_request_head.py) for a bounded time: no finding allowed.

atheris gets a virtual environment of its own (tests/hardening/tools.py); the harness imports
the project and its dependencies from this interpreter's site-packages. The seeds and the
dictionary steer it to the interesting parts of a request head.
"""

from __future__ import annotations

import os
import re
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests.hardening.tools import ToolUnavailable, tool_python

HARNESS = Path(__file__).with_name("fuzz_request_head.py")
ROOT = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("MTLS_PROXY_FUZZ_SECONDS", "20"))

SEEDS = [
    b"GET /api/echo HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"POST /api/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n",
    b"POST /api/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhelloGET /admin/ HTTP/1.1\r\n\r\n",
    b"GET /ws/echo HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\r\n",
    b"GET /api/%2e%2e/admin/ HTTP/1.0\r\nConnection: keep-alive\r\nX_Client_Cert_Subject: CN=x\r\n\r\n",
    b"/admin/../api/;x=%41%2F",
]
DICTIONARY = [
    "\r\n", "\r\n\r\n", "HTTP/1.1", "HTTP/1.0", "GET ", "POST ", "Host: localhost", "Content-Length: ",
    "Transfer-Encoding: chunked", "Connection: ", "Upgrade: websocket", "keep-alive", "Expect: 100-continue",
    "X-Client-Cert-Subject: ", "X_Forwarded_For: ", "/api/", "/admin/", "/ws/", "%2e", "%2f", "%5c", "%25",
    "%c0%ae", "..", "//", ";", "?", "#", "0\r\n\r\n",
]


def _dict_entry(token: str) -> str:
    """libFuzzer's dictionary syntax: printable ASCII, with \\xNN for the rest (and for quote, backslash)."""
    return '"' + "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else f"\\x{ord(c):02x}" for c in token) + '"'



@pytest.fixture(scope="module")
def atheris_python():
    try:
        return tool_python("atheris", "atheris>=2.3", "atheris")
    except ToolUnavailable as exc:
        pytest.skip(f"atheris unavailable: {exc}")


@pytest.mark.slow
def test_request_head_fuzzing_finds_nothing(atheris_python, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed{i}").write_bytes(seed)
    dict_file = tmp_path / "http.dict"
    dict_file.write_text("".join(_dict_entry(tok) + "\n" for tok in DICTIONARY))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([sysconfig.get_paths()["purelib"], str(ROOT)])}
    run = subprocess.run(
        [str(atheris_python), str(HARNESS), f"-max_total_time={SECONDS}", "-timeout=10", "-rss_limit_mb=2048",
         f"-dict={dict_file}", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1", str(corpus)],
        capture_output=True, timeout=SECONDS + 120, cwd=tmp_path, env=env,
    )
    out = run.stdout.decode(errors="replace") + run.stderr.decode(errors="replace")
    assert run.returncode == 0, out[-4000:]
    m = re.search(r"Done (\d+) runs in (\d+) second", out)
    assert m, out[-2000:]
    assert int(m.group(1)) >= 10 * SECONDS, out[-2000:]  # it really ran (thousands a second here)
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))
