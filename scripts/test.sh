#!/usr/bin/env bash
# The whole test suite, from a fresh machine: system tools the tests drive, the test extras, pytest.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Real clients the tests use: curl, openssl s_client, the JDK's javac/keytool/java (JSSE client),
# OkHttp and its okio (Debian's jars in /usr/share/java, for tests/java/OkHttpMtlsClient.java and
# EnrollmentClient.java, which also uses BouncyCastle);
# real servers the Django-side replay store tests start: PostgreSQL (initdb/pg_ctl) and Redis.
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
{ command -v javac >/dev/null && command -v keytool >/dev/null; } || missing+=(default-jdk-headless)
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
[ -f /usr/share/java/okhttp.jar ] || missing+=(libokhttp-java)
[ -f /usr/share/java/okio.jar ] || missing+=(libokio-java)
# BouncyCastle's PKIX jar (PKCS#10, PKCS#7) for tests/java/EnrollmentClient.java (brings bcprov and bcutil)
[ -f /usr/share/java/bcpkix.jar ] || missing+=(libbcpkix-java)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing test tools: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# A virtual environment unless one is active already.
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test]'
exec python -m pytest "$@"
