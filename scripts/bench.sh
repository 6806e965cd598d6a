#!/usr/bin/env bash
# The benchmarks (the bench/ package), from the repository root:
#   scripts/bench.sh                        # python -m bench: storefs beside its peers, 1 GiB, 2000 files, 3 rounds
#   scripts/bench.sh --size 128MiB --files 200 --rounds 1 --systems storefs,raw
#   scripts/bench.sh --no-install --systems storefs,rclone --workloads frozen --rounds 1
#   scripts/bench.sh rss [ARGS]             # python -m bench.rss: the daemon's peak RSS, 2 GiB through S3
#   scripts/bench.sh scale [ARGS]           # python -m bench.scale: a 100,000-key folder, a 1 GiB cold read
# Needs root (drop_caches, FUSE mounts); writes bench/latest.json and .png unless --out says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
case "${1:-}" in
    rss|scale)
        module="bench.$1"
        shift
        exec "$PY" -m "$module" "$@"
        ;;
esac
exec "$PY" -m bench "$@"
