"""The core tier's kit: the core built as the daemon builds it (storefs.daemon.build_core), driven
in-process, no FUSE.

build() makes one on the providers given (the memory provider by default, or a local
folder where a test is about the disk); clock is a FakeClock where time matters, so no test
sleeps through a quiet delay or patches time.monotonic.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from storefs.cache.datafiles import DataFiles
from storefs.cache.journal import Journal
from storefs.config import load_config
from storefs.core import Core
from storefs.daemon import build_core
from storefs.layout import Layout
from storefs.providers.base import Provider
from storefs.providers.memory import MemoryProvider


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def build(tmp: Path, providers: dict[str, Provider] | None = None, *, delay: str = "0s", uploaders: int = 2,
          fuse: str = "{}", clock: Callable[[], float] = time.monotonic, max_file_size: str | None = None) -> Core:
    """A core on providers (one MemoryProvider 'mem' by default), its cache in tmp/cache.

    The config names each provider as a local folder (the config knows no memory type); the
    objects given are what the core talks to."""
    providers = providers if providers is not None else {"mem": MemoryProvider("mem")}
    sections = "".join(f"  {name}: {{type: local, base_path: {tmp / ('data' if name == 'local' else 'unused')}}}\n"
                       for name in providers)
    cfg_file = tmp / "cfg.yaml"
    cfg_file.write_text(f"providers:\n{sections}"
                        f"cache: {{dir: {tmp / 'cache'}, writeback_delay: {delay}, uploaders: {uploaders}}}\n"
                        f"fuse: {fuse}\n"
                        + (f"max_file_size: {max_file_size}\n" if max_file_size else ""))
    cfg = load_config(str(cfg_file))
    return build_core(cfg, Layout(cfg.layout, cfg.max_file_size), providers,
                      Journal(os.path.join(cfg.cache.dir, "journal.db")), DataFiles(cfg.cache.dir), clock=clock)
