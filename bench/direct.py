"""A direct S3 client as a reference: what boto3 itself does with the same bytes on the same server.

Not a mount: the program talks S3 itself, at its best concurrency, so its figures say what the
server and the network allow a Python client. Per round, on the bench's SeaweedFS:

  write_bucket_s    the big file uploaded by boto3's transfer manager from a file on local disk
                    (multipart, the best of DIRECT_BIG_CONCURRENCY), until the upload returns
  create_bucket_s   --files objects of 64 KiB PUT from a thread pool (the best of DIRECT_THREADS)
  cold_read_mbps    the big file downloaded by the transfer manager (parallel ranged GETs) into a file on
                    local disk after the kernel's caches were dropped, and read back with the check a
                    mount's cold read gets (the first 4 KiB of each MiB)

Its rows carry the system name "direct"; the report sets storefs beside it ("storefs vs direct").
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from typing import Any

from boto3.s3.transfer import TransferConfig

from .common import MB, MiB, drop_caches, say
from .workloads import read_big, write_big

log = logging.getLogger(__name__)

NAME = "direct"
DIRECT_THREADS = (8, 16, 32)          # PUT pools tried for the small files; the fastest counts
DIRECT_BIG_CONCURRENCY = (8, 16)      # transfer-manager threads tried for the big file; the fastest counts
PART = 16 * MiB                       # multipart chunk and ranged-GET size for the big file
GET_THREADS = 16                      # parallel ranged GETs for the download


class Direct:
    """boto3 on the bench's server: the reference uploads and download of one round."""

    name = NAME

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.bucket = f"bench-{NAME}"
        self.pattern = b""
        self.client = ctx.server.client(max_pool_connections=max(*DIRECT_THREADS, GET_THREADS) + 4)
        self.src = os.path.join(ctx.work, "direct-big.bin")

    def setup(self, size: int, pattern: bytes) -> None:
        """The bucket, and the big file on local disk as the mounts get it (the transfer manager uploads
        from a file)."""
        self.ctx.server.create_bucket(self.bucket)
        self.pattern = pattern
        write_big(self.src, size, pattern)

    def close(self) -> None:
        self.client.close()
        if os.path.exists(self.src):
            os.unlink(self.src)

    def upload_big(self, key: str) -> float:
        """Seconds for the best transfer-manager upload of the big file (each attempt a fresh key)."""
        best = float("inf")
        for threads in DIRECT_BIG_CONCURRENCY:
            cfg = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=threads,
                                 use_threads=True)
            t0 = time.monotonic()
            self.client.upload_file(self.src, self.bucket, f"{key}.{threads}", Config=cfg)
            took = time.monotonic() - t0
            say(f"  {NAME}: big file with {threads} threads: {took:.2f} s")
            best = min(best, took)
            if threads != DIRECT_BIG_CONCURRENCY[-1]:
                self.client.delete_object(Bucket=self.bucket, Key=f"{key}.{threads}")
        self.client.copy_object(Bucket=self.bucket, Key=key,
                                CopySource={"Bucket": self.bucket, "Key": f"{key}.{DIRECT_BIG_CONCURRENCY[-1]}"})
        return best

    def download_big(self, key: str, size: int) -> float:
        """MB/s of boto3's transfer manager downloading the big file into a file on local disk (GET_THREADS
        parallel ranged GETs of PART), read back with the mount's check: what a program without the mount does
        to read the object. The kernel's caches are dropped first, as before a mount's cold read."""
        dest = os.path.join(self.ctx.work, "direct-down.bin")
        cfg = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=GET_THREADS,
                             use_threads=True)
        drop_caches()
        t0 = time.monotonic()
        try:
            self.client.download_file(self.bucket, key, dest, Config=cfg)
            read_big(dest, size, self.pattern)
            return size / (time.monotonic() - t0) / MB
        finally:
            if os.path.exists(dest):
                os.unlink(dest)

    def put_small(self, prefix: str, names: list[str], data: bytes) -> float:
        """Seconds for the fastest thread pool to PUT every small file (each attempt its own prefix)."""
        best = float("inf")
        for threads in DIRECT_THREADS:
            where = f"{prefix}/p{threads}"
            t0 = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda n, w=where: self.client.put_object(Bucket=self.bucket, Key=f"{w}/{n}",
                                                                        Body=data), names))
            took = time.monotonic() - t0
            say(f"  {NAME}: {len(names)} files with {threads} threads: {took:.2f} s")
            best = min(best, took)
        return best

    def clean(self, prefix: str) -> None:
        """Delete everything this round put (batched deletes)."""
        keys = self.ctx.keys(self.bucket, prefix)
        ordered = sorted(keys)
        for i in range(0, len(ordered), 1000):
            chunk = [{"Key": k} for k in ordered[i:i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
