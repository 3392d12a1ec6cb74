"""What the image runs, run outside Docker (no engine here): its ENTRYPOINT+CMD and its HEALTHCHECK.

The image's ports are fixed (8443, admin 9900), so the check runs in a private network namespace
(`unshare -n`, as root) where nothing else can hold them; the upstream is a Unix socket, which
crosses network namespaces.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()

# Runs inside the namespace: start the image's command, probe with the image's HEALTHCHECK, stop.
PROBE = r"""
import json, signal, subprocess, sys
argv, health = json.loads(sys.argv[1]), json.loads(sys.argv[2])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
before = subprocess.run(health, capture_output=True).returncode
proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
lines = [proc.stdout.readline(), proc.stdout.readline()]
after = subprocess.run(health, capture_output=True).returncode
proc.send_signal(signal.SIGTERM)
rc = proc.wait(30)
print(json.dumps({"lines": lines, "before": before, "after": after, "rc": rc}))
"""


def _json_instruction(name: str) -> list[str]:
    text = DOCKERFILE.replace("\\\n", " ")
    m = re.search(rf"^{name}\s+(?:--\S+\s+)*(?:CMD\s+)?(\[.*\])\s*$", text, re.MULTILINE)
    assert m, f"{name} must use the exec (JSON) form"
    return json.loads(m.group(1))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root for unshare -n (CI is root)")
def test_image_command_line_serves_and_healthcheck_passes(tmp_path, pki, upstream):
    entrypoint = _json_instruction("ENTRYPOINT")
    cmd = _json_instruction("CMD")
    health = _json_instruction("HEALTHCHECK")
    assert entrypoint == ["mtls-proxy"]
    config_in_image = cmd[cmd.index("--config") + 1]
    assert config_in_image == "/etc/mtls-proxy/config.yaml"
    assert "EXPOSE 8443" in DOCKERFILE and re.search(r"^USER\s+10001", DOCKERFILE, re.MULTILINE)

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "listen": "0.0.0.0:8443", "upstream": upstream.url,
        "tls": {"cert": str(pki.server_pem), "key": str(pki.server_key), "client_ca": str(pki.ca_pem)},
        "policy": {"rules": [{"name": "all", "paths": ["/"], "clients": "any"}]},
    }))
    exe = shutil.which(entrypoint[0]) or entrypoint[0]
    argv = [exe, *[str(config) if a == config_in_image else a for a in cmd]]
    probe = [sys.executable if a == "python" else a for a in health]
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(probe)],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "admin on http://127.0.0.1:9900" in out["lines"][0], out
    assert "listening on https://0.0.0.0:8443" in out["lines"][1], out
    assert out["before"] != 0  # the healthcheck can fail: nothing listened yet
    assert out["after"] == 0
    assert out["rc"] == 0  # SIGTERM (docker stop): drained, exit 0
