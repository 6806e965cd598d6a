"""The benchmark's floor core takes every call the FUSE edge makes of it, with the edge's arguments:
a method that refused one (the edge passes the caller to chmod, chown and a writable open) answered
EIO on the floor, so `tar` without --no-same-owner failed there and the floor's figures lied."""

from __future__ import annotations

import inspect
import os

import pytest

from bench.floor import MemoryCore
from storefs.core import protocol
from storefs.core.types import TRUSTED

CORE_METHODS = sorted(
    (name, f) for name, f in inspect.getmembers(protocol.MountCore, inspect.isfunction) if not name.startswith("_"))


@pytest.mark.parametrize("name,spec", CORE_METHODS, ids=[n for n, _ in CORE_METHODS])
def test_floor_takes_the_arguments_the_edge_may_pass(name: str, spec: object) -> None:
    """Each method the floor has binds every positional argument of the core's protocol."""
    impl = getattr(MemoryCore, name, None)
    if impl is None:
        pytest.skip(f"the floor has no {name} (the edge answers EIO; no workload calls it)")
    wanted = [p for p in inspect.signature(spec).parameters.values()  # type: ignore[arg-type]
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    inspect.signature(impl).bind(*range(len(wanted)))


def test_floor_chmod_chown_and_writable_open_with_a_caller() -> None:
    """The calls tar makes as root without --no-same-owner, and an append, as the edge makes them."""
    core = MemoryCore()
    core.mkdir("t", 0o755, 0, 0)
    fh = core.create("t/f", 0o600, 0, 0, True)
    core.release(fh)
    core.chown("t/f", 1000, 1000, TRUSTED)
    core.chmod("t/f", 0o640, TRUSTED)
    fh = core.open("t/f", os.O_WRONLY, TRUSTED)
    core.release(fh)
    a = core.getattr("t/f")
    assert (a.uid, a.gid, a.mode & 0o7777) == (1000, 1000, 0o640)
