"""scripts/check_layers.py: the import layers hold in this tree, and a breach of each is named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts" / "check_layers.py"


def run(package: Path | None = None) -> subprocess.CompletedProcess:
    args = [sys.executable, str(CHECK)] + ([str(package)] if package else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_this_tree_keeps_its_layers() -> None:
    res = run()
    assert res.returncode == 0, res.stdout + res.stderr


def test_each_breach_is_named_with_file_line_and_import(tmp_path: Path) -> None:
    pkg = tmp_path / "storefs"
    files = {
        "__init__.py": "",
        "fs.py": "import mfusepy\n",  # the FUSE edge: allowed
        "cli.py": "import os\nimport mfusepy\n",
        "daemon.py": "from .providers.local import LocalProvider\n",  # the wiring: allowed
        "remote.py": "from .providers import ObjectInfo\n\ndef f():\n    from botocore.exceptions import ClientError\n",
        "core/__init__.py": "",
        "core/tree.py": "import importlib\nimportlib.import_module('storefs.providers.memory')\n",
        "cache/__init__.py": "",
        "cache/index.py": "from ..providers import base, s3\n",
        "providers/__init__.py": "from .base import ObjectInfo\n",
        "providers/base.py": "ObjectInfo = object\n",
        "providers/local.py": "",
        "providers/memory.py": "",
        "providers/s3.py": "import boto3\n",  # the S3 provider: allowed
        "providers/s3_sign.py": "from botocore.auth import SigV4Auth\n",
        "testing/__init__.py": "",
        "testing/seaweed.py": "import boto3\nfrom storefs.providers import local\n",  # test support: allowed
        "metrics.py": "from .testing import seaweed\n",  # the daemon never runs test code
        "view/__init__.py": "",
        "view/remote.py": "from ..providers.local import LocalProvider\n",  # the view is core
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    res = run(pkg)
    assert res.returncode == 1
    found = sorted(line.split(": ", 1)[0].rsplit("/storefs/", 1)[1] for line in res.stdout.splitlines())
    assert found == ["cache/index.py:1", "cli.py:2", "core/tree.py:2", "metrics.py:1", "remote.py:4",
                     "view/remote.py:1"], res.stdout
    assert "from ..providers import s3" in res.stdout and "import mfusepy" in res.stdout
