"""requirements.lock: the image's runtime dependencies, pinned with hashes, generated from pyproject.toml.

The lock is pip-tools' ``pip-compile`` output (regenerate: ``bash scripts/lock.sh``). These tests
fail when pyproject.toml gains or changes a runtime dependency the lock does not satisfy, when the
lock carries an entry nothing needs, and when the Dockerfile stops installing from it. No network.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = (ROOT / "requirements.lock").read_text()
#: the image's interpreter and platform (python:3.11-slim)
IMAGE_ENV = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.0",
             "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython"}


def lock_entries() -> dict[str, tuple[Version, list[str], list[str]]]:
    """name -> (pinned version, hashes, what it is "via") from pip-compile's output."""
    out: dict[str, tuple[Version, list[str], list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", LOCK):  # one block per entry; the header lines start with #
        m = re.match(r"([A-Za-z0-9._-]+)==([^\s;\\]+)", block)
        if not m:
            continue
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
        via_lines = re.findall(r"^[ \t]+#[ \t]+(?:via[ \t]+)?(.+)$", block, re.MULTILINE)
        via = [v.strip() for line in via_lines for v in line.split(",") if v.strip() and v.strip() != "via"]
        out[canonicalize_name(m.group(1))] = (Version(m.group(2)), hashes, via)
    return out


def runtime_requirements() -> list[Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [r for r in map(Requirement, deps) if r.marker is None or r.marker.evaluate(IMAGE_ENV)]


def test_lock_pins_every_runtime_dependency_within_pyproject_specifiers():
    entries = lock_entries()
    assert len(entries) >= len(runtime_requirements()) > 0
    for req in runtime_requirements():
        name = canonicalize_name(req.name)
        assert name in entries, f"{req} (pyproject.toml) is not in requirements.lock: run bash scripts/lock.sh"
        version = entries[name][0]
        assert req.specifier.contains(version, prereleases=True), \
            f"requirements.lock pins {name}=={version}, outside pyproject.toml's {req}: run bash scripts/lock.sh"


def test_every_lock_entry_is_hashed_and_needed():
    """pip --require-hashes needs a hash per entry; an entry nothing needs is a stale lock."""
    entries = lock_entries()
    direct = {canonicalize_name(r.name) for r in runtime_requirements()}
    for name, (version, hashes, via) in entries.items():
        assert hashes, f"{name}=={version} has no --hash"
        parents = {canonicalize_name(v.split(" ")[0]) for v in via}
        assert name in direct or parents & set(entries), f"{name}=={version} is needed by nothing in the lock ({via})"
        if name in direct:
            assert any(v.startswith("mtls-proxy (pyproject.toml)") for v in via), (name, via)


def test_lock_is_what_scripts_lock_sh_generates():
    """The header records the pip-compile command; scripts/lock.sh runs that same command."""
    header = re.search(r"^#\s+(pip-compile .+)$", LOCK, re.MULTILINE)
    assert header, "requirements.lock lost pip-compile's header"
    script = (ROOT / "scripts" / "lock.sh").read_text()
    for flag in re.findall(r"--[a-z-]+", header.group(1)):
        assert flag.split("=")[0] in script, f"{flag} is in the lock's header but not in scripts/lock.sh"
    assert "--index-url" not in LOCK and "--find-links" not in LOCK and "file://" not in LOCK  # no local indexes


def test_dockerfile_installs_the_lock_then_the_package_alone():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^COPY requirements\.lock /src/$", dockerfile, re.MULTILINE)
    install_lock = dockerfile.index("pip install --no-cache-dir --require-hashes -r /src/requirements.lock")
    install_pkg = dockerfile.index("pip install --no-cache-dir --no-deps /src && pip check")
    assert install_lock < install_pkg
    assert len(re.findall(r"pip install", dockerfile)) == 2  # nothing else is installed unpinned
