#!/usr/bin/env bash
# Set up everything the project needs on a Debian machine with Python 3.11+ and Node 20+.
# Idempotent: each step checks before acting, so running it again is quick.
#
#   scripts/setup.sh            the app (virtualenv + pip, Azurite from npm)
#   scripts/setup.sh --tests    also what the tests need (PostgreSQL server, Chromium)
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--tests" ] && want_tests=1

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# --- Debian packages (only where root allows; otherwise say what is missing) -----------------
need_pkgs=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
command -v node >/dev/null || need_pkgs+=(nodejs)
command -v npm >/dev/null || need_pkgs+=(npm)
# unixODBC: pyodbc's runtime library, needed only to talk to Azure SQL, but cheap to have.
[ -e /usr/lib/x86_64-linux-gnu/libodbc.so.2 ] || [ -e /usr/lib/aarch64-linux-gnu/libodbc.so.2 ] \
  || need_pkgs+=(unixodbc)
if [ "$want_tests" = 1 ]; then
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
    || need_pkgs+=(postgresql)
  command -v chromium >/dev/null || need_pkgs+=(chromium)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    say "missing Debian packages (install them as root): ${need_pkgs[*]}"
  fi
fi

# --- Python virtualenv -------------------------------------------------------------------
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
reqs=requirements-dev.txt
stamp=.venv/.requirements.sha256
digest=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  say "installing Python packages from $reqs"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r "$reqs"
  echo "$digest" > "$stamp"
fi

# --- Azurite (Blob Storage emulator) from npm ---------------------------------------------
lock_digest=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -x node_modules/.bin/azurite-blob ] || [ "$(cat node_modules/.lock.sha256 2>/dev/null)" != "$lock_digest" ]; then
  say "installing Azurite (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  echo "$lock_digest" > node_modules/.lock.sha256
fi
say "ready"
