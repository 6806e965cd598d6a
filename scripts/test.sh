#!/usr/bin/env bash
# Install what is needed, run the static checks (ruff, mypy, import layers), then the whole test suite
# (unit + real FUSE mounts).
#   scripts/test.sh                 # everything
#   scripts/test.sh -k rsync -x     # extra arguments go to pytest
# Exits non-zero on any failure, and also when pytest collected no test (its exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
PY="${PYTHON:-$(command -v python3 || command -v python)}"

# in CI (and here) the mount tests must run: a missing FUSE is a failure, not a skip
export STOREFS_TESTS_REQUIRE_FUSE="${STOREFS_TESTS_REQUIRE_FUSE:-1}"
export STOREFS_TESTS_REQUIRE_S3="${STOREFS_TESTS_REQUIRE_S3:-1}"

# static checks first, each failing the run: ruff (rules in pyproject.toml), mypy (the whole package,
# the core strictly: pyproject.toml) and the import layers (only fs.py imports mfusepy, only the S3
# provider botocore/boto3, the core no provider module)
"$PY" -m ruff check storefs tests scripts bench
"$PY" -m mypy
"$PY" scripts/check_layers.py

set +e
"$PY" -m pytest -q -ra --timeout=300 -p no:cacheprovider "$@" tests
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no test: counted as a failure" >&2
    exit 1
fi
exit "$rc"
