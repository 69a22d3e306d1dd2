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

# --- Worker virtualenv (tests only): the Functions Python worker's indexing code -----------
# tests/test_worker_index.py indexes function_app.py with azure-functions-runtime (the worker as
# a library; Python >= 3.13) in a virtualenv holding requirements.txt alone, as a deployment does.
WORKER_RUNTIME='azure-functions-runtime>=1.3,<2'
find_python313() {
  local candidate
  for candidate in "${PYTHON313:-}" python3.13 python3.14 \
      "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.1[3-9]*/bin/python3; do
    [ -n "$candidate" ] || continue
    candidate=$(command -v "$candidate" 2>/dev/null) || continue
    # A pyenv shim exists even when its version is not selected: ask the interpreter itself.
    if "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}
if [ "$want_tests" = 1 ]; then
  if PY313=$(find_python313); then
    worker_digest=$( (cat requirements.txt; echo "$WORKER_RUNTIME"; "$PY313" --version) \
      | sha256sum | cut -d' ' -f1)
    worker_stamp=.venv-worker/.requirements.sha256
    exec 9>.venv-worker.lock && flock 9  # two setups at once must not build it twice
    if [ ! -f "$worker_stamp" ] || [ "$(cat "$worker_stamp")" != "$worker_digest" ]; then
      say "building .venv-worker with $("$PY313" --version) (requirements.txt + $WORKER_RUNTIME)"
      rm -rf .venv-worker  # clean: nothing but what a deployment installs
      "$PY313" -m venv .venv-worker
      .venv-worker/bin/python -m pip install -q --upgrade pip
      .venv-worker/bin/python -m pip install -q -r requirements.txt "$WORKER_RUNTIME"
      echo "$worker_digest" > "$worker_stamp"
    fi
    exec 9>&-
  else
    say "no Python >= 3.13 found (PYTHON313, python3.13, pyenv): the worker-index test will be" \
      "skipped; install one (e.g. 'pyenv install 3.13') and run this again"
  fi
fi

# --- Azurite (Blob Storage emulator) from npm ---------------------------------------------
lock_digest=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -x node_modules/.bin/azurite-blob ] || [ "$(cat node_modules/.lock.sha256 2>/dev/null)" != "$lock_digest" ]; then
  say "installing Azurite (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  echo "$lock_digest" > node_modules/.lock.sha256
fi
say "ready"
