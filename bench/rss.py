#!/usr/bin/env python3
"""Peak memory of the storefs daemon while a 2 GiB file goes through an S3 mount.

Starts a SeaweedFS server on free loopback ports, mounts storefs on a bucket, writes a
2 GiB file with dd, waits until it is in the bucket (multipart upload), empties the
cache with a remount, reads the file back cold (ranged GETs with read-ahead), and prints
throughput and the daemon's peak RSS (VmHWM) for each phase. Target: under 200 MiB.

    python -m bench.rss [--size-mib 2048] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

from storefs.testing.seaweed import SeaweedServer

from .common import MiB, vm

log = logging.getLogger(__name__)

PROG = "python -m bench.rss"  # how it is run, for --help
RSS_TARGET_MIB = 200


def storefs(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """A storefs command; raises on a non-zero exit."""
    return subprocess.run([sys.executable, "-m", "storefs", *args], check=True, timeout=timeout,
                          capture_output=True, text=True)


def daemon_pid(mnt: str) -> int:
    """The pid of the daemon serving mnt (storefs status)."""
    return json.loads(storefs("status", "--json", mnt).stdout)["pid"]


def main() -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="storefs-bench-", dir=args.workdir)
    mnt, cache = os.path.join(work, "mnt"), os.path.join(work, "cache")
    os.makedirs(mnt)
    server = SeaweedServer(os.path.join(work, "seaweed")).start()
    results: dict[str, float] = {}
    try:
        server.create_bucket("bench")
        cfg = {"default_provider": "s3",
               "providers": {"s3": {"type": "s3", "bucket": "bench", "endpoint_url": server.endpoint_url,
                                    "region": server.region, "path_style": True,
                                    "access_key_id": server.access_key, "secret_access_key": server.secret_key}},
               "cache": {"dir": cache, "writeback_delay": "0.5s"},
               "max_file_size": "64GiB"}
        cfg_path = os.path.join(work, "storefs.yaml")
        with open(cfg_path, "w") as f:
            yaml.safe_dump(cfg, f)
        storefs("mount", "-c", cfg_path, mnt)
        pid = daemon_pid(mnt)
        art = os.path.join(mnt, "bench/video/b1/a1")
        os.makedirs(art)
        path = os.path.join(art, "big.bin")
        size = args.size_mib * MiB

        t0 = time.monotonic()
        subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={args.size_mib}",
                        "conv=fsync", "status=none"], check=True)
        results["write_s"] = time.monotonic() - t0
        storefs("flush", mnt)
        results["write_and_upload_s"] = time.monotonic() - t0
        results["rss_peak_write_mib"] = vm(pid, "VmHWM") / MiB
        head = server.client().head_object(Bucket="bench", Key="bench/video/b1/a1/big.bin")
        assert head["ContentLength"] == size, head
        results["etag_parts"] = int(head["ETag"].strip('"').rpartition("-")[2] or 1)

        storefs("unmount", mnt)
        shutil.rmtree(cache)
        storefs("mount", "-c", cfg_path, mnt)
        pid = daemon_pid(mnt)
        t0 = time.monotonic()
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        results["cold_read_s"] = time.monotonic() - t0
        results["rss_peak_read_mib"] = vm(pid, "VmHWM") / MiB
        zero = hashlib.sha256()
        block = bytes(1 << 20)
        for _ in range(args.size_mib):
            zero.update(block)
        assert h.hexdigest() == zero.hexdigest(), "content differs after the round trip"
        storefs("unmount", mnt)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    mib = args.size_mib
    print(f"{'phase':<28}{'figure':>14}")
    print(f"{'write (dd, close)':<28}{mib / results['write_s']:>10.0f} MB/s")
    print(f"{'write until in bucket':<28}{mib / results['write_and_upload_s']:>10.0f} MB/s")
    print(f"{'multipart parts':<28}{results['etag_parts']:>14}")
    print(f"{'cold read (ranged GETs)':<28}{mib / results['cold_read_s']:>10.0f} MB/s")
    print(f"{'peak RSS, write phase':<28}{results['rss_peak_write_mib']:>10.0f} MiB")
    print(f"{'peak RSS, read phase':<28}{results['rss_peak_read_mib']:>10.0f} MiB")
    peak = max(results["rss_peak_write_mib"], results["rss_peak_read_mib"])
    verdict = "OK" if peak < RSS_TARGET_MIB else "OVER"
    print(f"daemon peak RSS {peak:.0f} MiB (target < {RSS_TARGET_MIB} MiB): {verdict}")
    return 0 if peak < RSS_TARGET_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
