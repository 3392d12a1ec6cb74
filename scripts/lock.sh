#!/usr/bin/env bash
# Regenerate requirements.lock (the runtime dependencies the Docker image installs, pinned with hashes)
# from pyproject.toml's [project] dependencies, with pip-tools' pip-compile under Python 3.11 (the image's).
# Run it after changing a dependency in pyproject.toml, or to take newer releases; commit the result.
# Usage: bash scripts/lock.sh [extra pip-compile args, e.g. --upgrade or --upgrade-package cryptography]
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3.11 -m venv "$tools"
"$tools/bin/pip" install -q pip-tools
# Resolve against the public index only: a machine's own pip config (extra indexes, find-links,
# constraints) must not leak into the lock.
env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
  "$tools/bin/pip-compile" --quiet --strip-extras --generate-hashes --allow-unsafe \
  --no-emit-index-url --no-emit-find-links --output-file requirements.lock "$@" pyproject.toml
