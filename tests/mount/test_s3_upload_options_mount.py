"""sse and storage_class from the config, through a mount: a file written, renamed and chmod-ed keeps them."""

from __future__ import annotations

import os
import uuid

from conftest import require_fuse

from storefs.testing.backends import S3Backend
from storefs.testing.mount import StorefsMount


def test_a_mounts_uploads_renames_and_chmods_keep_sse_and_storage_class(moto_server, tmp_path):
    require_fuse()
    backend = S3Backend(moto_server, f"t-{uuid.uuid4().hex[:20]}", sse="AES256", storage_class="STANDARD_IA")
    m = StorefsMount(tmp_path, backend)
    art = "t1/image/b1/a1"
    try:
        m.start()
        os.makedirs(m.mnt / art)
        (m.mnt / art / "first.png").write_bytes(b"first")
        (m.mnt / art / "second.png").write_bytes(b"second")
        m.flush()
        os.rename(m.mnt / art / "first.png", m.mnt / art / "moved.png")
        os.chmod(m.mnt / art / "second.png", 0o600)
        m.flush()
        for key in (f"{art}/moved.png", f"{art}/second.png", f"{art}/"):
            head = backend.head(key)
            assert head is not None, key
            assert (head.get("ServerSideEncryption"), head.get("StorageClass")) == ("AES256", "STANDARD_IA"), key
        assert backend.meta(f"{art}/second.png")["mode"] == 0o600
        assert backend.head(f"{art}/first.png") is None
    finally:
        m.cleanup()
        backend.close()
