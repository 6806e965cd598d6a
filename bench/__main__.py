"""storefs side by side with rclone mount, JuiceFS, s3fs-fuse and a raw local folder, on one SeaweedFS.

Starts one SeaweedFS server on free loopback ports (storefs.testing.seaweed), gives each system
a bucket of its own on it, and runs the same workloads on each, interleaved: in round r every
system does workload w, then every system does the next one. Medians over the rounds are
printed as a table with storefs' ratio to the best peer and to the raw folder; every figure
of every round goes to a JSON file (--out) and a chart next to it (same name, .png).

The systems are described in bench/systems.py, the workloads in bench/workloads.py (the steps
others depend on run anyway, unrecorded), the `frozen` workload in bench/frozen.py, the `outage`
workload (server killed, then frozen: how soon an uncached read fails, how soon the files written
meanwhile reach the server once it is back) in bench/outage.py, after the others, round by round.

    python -m bench                                  # 1 GiB, 2000 files, 3 rounds, every workload
    python -m bench --size 128MiB --files 200 --rounds 1 --systems storefs,raw
    python -m bench --no-install --systems storefs,rclone --workloads frozen --rounds 1
    python -m bench --no-install --systems storefs,direct --workloads write,cold_read,create
    python -m bench --no-install --systems storefs,juicefs,rclone --workloads outage --rounds 2

MB/s are 10^6 bytes per second. Needs root (drop_caches, FUSE mounts).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile

from storefs.testing.seaweed import SeaweedServer

from . import frozen
from .common import ROOT, MiB, drop_caches, exit_on_sigterm, first_line, parse_size, say
from .direct import NAME as DIRECT
from .direct import Direct
from .outage import run_outage
from .report import METRICS, chart, machine, medians, ratios, table
from .systems import ALL_SYSTEMS, SYSTEM_CLASSES, Ctx, System
from .workloads import FOLDERS, SMALL, WORKLOADS, Bench, make_tarball

log = logging.getLogger(__name__)

PROG = "python -m bench"  # how it is run, for --help
FROZEN_SECONDS = 10.0  # default length of the freeze in the frozen workload
OUTAGE = "outage"  # the workload of bench/outage.py, run after the others


def outages(bench: Bench, server: SeaweedServer) -> None:
    """The outage workload, interleaved: in round r each system with a bucket in turn, alone mounted."""
    for s in bench.systems:
        s.unmount()
    for rnd in range(1, bench.args.rounds + 1):
        say(f"outage round {rnd}/{bench.args.rounds}")

        def step(s: System, rnd: int = rnd) -> None:
            if s.has_bucket:
                run_outage(s, server, f"bench/model/o{rnd}", lambda metric, v: bench.record(rnd, s, metric, v))
        bench.each(rnd, OUTAGE, step)


def main() -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=1024 * MiB, help="big file size (default 1GiB)")
    ap.add_argument("--files", type=int, default=2000, help="small files to create (default 2000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--systems", default=",".join((*ALL_SYSTEMS, DIRECT)),
                    help=f"comma-separated, of {', '.join((*ALL_SYSTEMS, DIRECT))} ({DIRECT}: boto3 itself, "
                         "a reference)")
    ap.add_argument("--workloads", default=",".join((*WORKLOADS, OUTAGE)))
    ap.add_argument("--rand-seconds", type=float, default=10.0, help="duration of the random-read test")
    ap.add_argument("--frozen-seconds", type=float, default=FROZEN_SECONDS,
                    help=f"how long SeaweedFS stays frozen in the frozen workload (default {FROZEN_SECONDS:.0f})")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "latest.json"))
    ap.add_argument("--workdir", default=None, help="parent of the temp folder (default: the system temp dir)")
    ap.add_argument("--no-install", action="store_true", help="skip scripts/install_peers.sh")
    args = ap.parse_args()
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for s in args.systems:
        if s not in SYSTEM_CLASSES and s != DIRECT:
            ap.error(f"unknown system {s!r} (known: {', '.join((*ALL_SYSTEMS, DIRECT))})")
    for w in args.workloads:
        if w not in (*WORKLOADS, OUTAGE):
            ap.error(f"unknown workload {w!r} (known: {', '.join((*WORKLOADS, OUTAGE))})")
    exit_on_sigterm()
    if not args.no_install:
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "install_peers.sh")], env={**os.environ,
                       "PYTHON": sys.executable})
    if not drop_caches():
        say("cannot write /proc/sys/vm/drop_caches: cold figures include the kernel's page cache")

    started = datetime.datetime.now(datetime.UTC)
    load_start = os.getloadavg()
    work = tempfile.mkdtemp(prefix="storefs-bench-", dir=args.workdir)
    server = SeaweedServer(os.path.join(work, "seaweed"))
    systems: list[System] = []
    bench: Bench | None = None
    ctx: Ctx | None = None
    direct: Direct | None = None
    failed_setup: dict[str, str] = {}
    try:
        server.start()
        ctx = Ctx(args, work, server)
        ctx.tarball = os.path.join(work, "stdlib.tar")
        ctx.tar_files = make_tarball(ctx.tarball) if "tar" in args.workloads else 0
        say(f"work dir {work}; SeaweedFS at {server.endpoint_url}; tarball of {ctx.tar_files} files")
        for name in (n for n in args.systems if n != DIRECT):
            s = SYSTEM_CLASSES[name](ctx)
            try:
                s.setup()
                s.mount("write")
                s.unmount()
                systems.append(s)
            except Exception as e:  # noqa: BLE001 - a system that cannot run is left out and named
                failed_setup[name] = f"{type(e).__name__}: {e}"[-3000:]
                say(f"{name}: left out: {failed_setup[name]}")
                try:
                    s.unmount()
                except Exception as e2:  # noqa: BLE001
                    say(f"{name}: unmount after the failed setup failed too: {e2}")
        direct = Direct(ctx) if DIRECT in args.systems else None
        bench = Bench(ctx, systems, direct)
        if direct is not None:
            direct.setup(args.size, bench.pattern)
        if any(w in WORKLOADS for w in args.workloads):
            bench.run()
        if OUTAGE in args.workloads:
            outages(bench, server)
    except KeyboardInterrupt:
        say("interrupted: cleaning up")
    finally:
        for s in systems:
            try:
                s.unmount()
            except Exception as e:  # noqa: BLE001
                say(f"{s.name}: unmount failed: {e}")
        versions = {s.name: s.version() for s in systems}
        versions["seaweedfs"] = first_line(["weed", "version"])
        versions["fio"] = first_line(["fio", "--version"]) if shutil.which("fio") else "not installed"
        if direct is not None:
            direct.close()
        if ctx is not None:
            ctx.s3.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    if bench is None or not bench.rows:
        say("no figures")
        return 1
    names = [s.name for s in systems] + ([DIRECT] if direct is not None else [])
    med = medians(bench.rows)
    rat = ratios(med)
    print(table(med, rat, names))
    for e in bench.errors:
        print(f"error: round {e['round']} {e['system']} {e['step']}: {e['error'].splitlines()[0][:300]}")
    for name, why in failed_setup.items():
        print(f"left out: {name}: {why.splitlines()[0][:300]}")
    if bench.frozen:
        print(f"\nSeaweedFS frozen (SIGSTOP) for {args.frozen_seconds:.0f} s, {frozen.THREADS} threads, "
              f"all rounds pooled:")
        print(frozen.table(bench.frozen))
    info = machine()
    info["loadavg_start"], info["loadavg_end"] = load_start, os.getloadavg()
    result = {
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.datetime.now(datetime.UTC) - started).total_seconds()),
        "machine": info, "versions": versions,
        "params": {"size": args.size, "files": args.files, "file_size": SMALL, "folders": FOLDERS,
                   "rounds": args.rounds, "rand_seconds": args.rand_seconds, "frozen_seconds": args.frozen_seconds,
                   "tar_files": ctx.tar_files if ctx else 0, "systems": names, "workloads": args.workloads},
        "setup": {s.name: s.setup_note for s in systems if s.setup_note},
        "storefs_config": ctx.storefs_config if ctx else {},
        "metrics": {k: {"label": lbl, "unit": u, "higher_is_better": hb} for k, lbl, u, hb in METRICS},
        "medians": med, "ratios": rat, "rounds": bench.rows,
        "frozen": {"pooled": {name: t.summary() for name, t in bench.frozen.items()},
                   "rounds": bench.frozen_rounds} if bench.frozen else {},
        "errors": bench.errors, "left_out": failed_setup,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=False)
        f.write("\n")
    title = (f"storefs vs peers on one SeaweedFS — {info['cpus']} CPUs, kernel {info['kernel']}, "
             f"{args.size // MiB} MiB file, {args.files} files, median of {args.rounds} rounds")
    png = chart(os.path.splitext(args.out)[0] + ".png", med, names, title)
    say(f"wrote {args.out}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
