"""The shipped trust anchors and status snapshot are package data: a built wheel carries them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ["apple_app_attestation_root_ca.pem", "google_attestation_status.json", "google_roots.json",
        "google_software_roots.pem"]


def test_the_wheel_ships_the_attestation_data(tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = tmp_path.glob("mtls_proxy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in DATA:
        assert f"mtls_proxy/attestation/data/{name}" in names
        assert (ROOT / "mtls_proxy" / "attestation" / "data" / name).read_bytes() == \
            zipfile.ZipFile(wheel).read(f"mtls_proxy/attestation/data/{name}")
