#!/usr/bin/env bash
# Mount storefs (embedded default config: a local folder provider under the user's data
# folder, cache under the user's cache folder) on MOUNTPOINT and show it working.
#   scripts/run.sh /tmp/storefs-demo
# Safe to run again: an existing live storefs mount is reused; a dead one is detached first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 1 ]; then
    echo "usage: $0 MOUNTPOINT" >&2
    exit 2
fi
MNT="$1"

PY="${PYTHON:-$(command -v python3 || command -v python)}"

# install.sh (apt, pip: seconds) only when something is missing or pyproject.toml changed since
# the last install from this checkout: the stamp records pyproject.toml's hash and the interpreter
CHECKOUT="$(pwd -P)"
STAMP="${XDG_CACHE_HOME:-$HOME/.cache}/storefs/install-stamp-$(printf %s "$CHECKOUT" | sha256sum | cut -c1-16)"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $PY $("$PY" --version 2>&1)"
installed_here() {  # storefs imports from this checkout, outside it (the checkout's folder is not on the path)
    (cd / && "$PY" -c 'import os, sys, storefs; sys.exit(os.path.dirname(os.path.dirname(os.path.realpath(storefs.__file__))) != sys.argv[1])' "$CHECKOUT") 2>/dev/null
}
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ] || ! command -v fusermount3 >/dev/null 2>&1 || ! installed_here; then
    bash scripts/install.sh
    mkdir -p "$(dirname "$STAMP")"
    printf '%s\n' "$want" > "$STAMP"
fi
storefs() { "$PY" -m storefs "$@"; }

is_mounted() { awk -v m="$1" '$2 == m { found = 1 } END { exit !found }' /proc/self/mounts; }

# absolute path without touching the folder itself (a dead FUSE mount answers ENOTCONN)
MNT="$("$PY" -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$MNT")"
if ! is_mounted "$MNT"; then
    mkdir -p "$MNT"
    MNT="$(cd "$MNT" && pwd -P)"
fi

if is_mounted "$MNT"; then
    if storefs status "$MNT" >/dev/null 2>&1; then
        echo "run.sh: storefs is already mounted on $MNT" >&2
    else
        echo "run.sh: $MNT is mounted but no storefs daemon answers; detaching it" >&2
        fusermount3 -u -z "$MNT" 2>/dev/null || umount -l "$MNT"
    fi
fi
if ! is_mounted "$MNT"; then
    storefs mount "$MNT"
fi

ART="$MNT/demo/image/board1/artifact1"
mkdir -p "$ART"
echo "hello from storefs, $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$ART/hello.txt"
echo
echo "== ls -la $ART"
ls -la "$ART"
echo
echo "== cat $ART/hello.txt"
cat "$ART/hello.txt"
echo
echo "== storefs status $MNT"
storefs status "$MNT"
echo
if command -v storefs >/dev/null 2>&1; then CLI=storefs; else CLI="$PY -m storefs"; fi
cat <<MSG
storefs is mounted on $MNT. Use it like any folder: paths are
  TENANT/TYPE/BOARD/ARTIFACT/FILE   (TYPE: image, video, audio, model, metadata)
Wait for uploads:      $CLI flush $MNT
Unmount when done:     $CLI unmount $MNT
MSG
