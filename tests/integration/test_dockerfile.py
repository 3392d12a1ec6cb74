"""What the image runs, run outside Docker (no engine here): its ENTRYPOINT+CMD and its HEALTHCHECK."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _json_instruction(name: str) -> list[str]:
    text = DOCKERFILE.replace("\\\n", " ")
    m = re.search(rf"^{name}\s+(?:--\S+\s+)*(?:CMD\s+)?(\[.*\])\s*$", text, re.MULTILINE)
    assert m, f"{name} must use the exec (JSON) form"
    return json.loads(m.group(1))


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
        "listen": "127.0.0.1:8443", "upstream": upstream.url,
        "tls": {"cert": str(pki.server_pem), "key": str(pki.server_key), "client_ca": str(pki.ca_pem)},
        "policy": {"rules": [{"name": "all", "paths": ["/"], "clients": "any"}]},
    }))
    exe = shutil.which(entrypoint[0]) or entrypoint[0]
    argv = [exe, *[str(config) if a == config_in_image else a for a in cmd]]
    unhealthy = subprocess.run([sys.executable if a == "python" else a for a in health], capture_output=True)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        first, second = proc.stdout.readline(), proc.stdout.readline()
        assert "admin on http://127.0.0.1:9900" in first, first
        assert "listening on https://127.0.0.1:8443" in second, second
        healthy = subprocess.run([sys.executable if a == "python" else a for a in health], capture_output=True)
        assert healthy.returncode == 0, healthy.stderr
        assert unhealthy.returncode != 0  # the healthcheck can fail: nothing listened before start
        proc.send_signal(15)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
