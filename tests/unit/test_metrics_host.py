"""Metrics and status without a mount: latency histograms, the provider-down gauge and outage record,
probes of a hung provider, retries shown as waiting, a scrape that never walks the cache, and
refusals logged once."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest

import storefs.view.observed as observed
from storefs.cache.datafiles import DataFiles
from storefs.cache.journal import Journal
from storefs.cache.uploader import Uploader, UploadJobs
from storefs.config import load_config
from storefs.daemon import build_core
from storefs.errors import NotFound, ProviderUnavailable
from storefs.layout import Layout
from storefs.metrics import Histogram, render
from storefs.providers.memory import MemoryProvider
from storefs.view.health import ProviderHealth
from storefs.view.observed import ObservedProvider, Watcher

ART = "t1/image/b1/a1"


def test_histogram_lines_are_cumulative_with_sum_and_count():
    h = Histogram("x_seconds", "Test.", ("op",), buckets=(0.01, 0.1, 1.0))
    for v in (0.005, 0.01, 0.05, 0.5, 3.0):
        h.observe(("get",), v)
    h.observe(('a"b',), 0.2)
    lines = h.lines()
    assert lines[:2] == ["# HELP x_seconds Test.", "# TYPE x_seconds histogram"]
    assert 'x_seconds_bucket{op="get",le="0.01"} 2' in lines  # a value on a bound counts in it
    assert 'x_seconds_bucket{op="get",le="0.1"} 3' in lines
    assert 'x_seconds_bucket{op="get",le="1"} 4' in lines
    assert 'x_seconds_bucket{op="get",le="+Inf"} 5' in lines
    assert 'x_seconds_count{op="get"} 5' in lines
    assert 'x_seconds_sum{op="get"} 3.565000' in lines
    assert 'x_seconds_bucket{op="a\\"b",le="+Inf"} 1' in lines


def test_render_has_the_histograms_and_the_provider_down_gauge():
    h = Histogram("storefs_test_seconds", "Test.", ("provider", "op"))
    h.observe(("s3", "put"), 0.2)
    text = render({"provider_health": {"s3": {"state": "down"}, "local": {"state": "up"}}}, histograms=(h,))
    assert "# TYPE storefs_provider_down gauge" in text
    assert 'storefs_provider_down{provider="s3"} 1' in text
    assert 'storefs_provider_down{provider="local"} 0' in text
    assert 'storefs_test_seconds_bucket{provider="s3",op="put",le="0.25"} 1' in text


def test_health_outage_record_since_error_and_back_up():
    wall = [1000.0]
    h = ProviderHealth(wall=lambda: wall[0])
    assert h.report(["s3"])["s3"] == {"state": "up", "since": None, "error": None, "slow": False}
    h.no_answer("s3", "timed out")
    wall[0] = 1010.0
    h.no_answer("s3", "timed out again")
    assert h.report(["s3"])["s3"] == {"state": "down", "since": 1000.0, "error": "timed out again", "slow": False}
    h.answered("s3")
    assert h.report(["s3"])["s3"]["state"] == "up"


class HangingProvider(MemoryProvider):
    """head() blocks while `frozen` is set (a frozen server), and counts its calls."""

    def __init__(self) -> None:
        super().__init__("mem")
        self.frozen = threading.Event()
        self.thawed = threading.Event()

    def head(self, key: str):
        if self.frozen.is_set():
            self.thawed.wait(30)
        return super().head(key)


def _wait(cond, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_a_hung_request_is_probed_and_its_provider_shown_down_then_up(monkeypatch):
    monkeypatch.setattr(observed, "WATCH_EVERY", 0.05)
    health = ProviderHealth()
    inner = HangingProvider()
    p = ObservedProvider(inner, Watcher(health, probe_after=0.2, probe_timeout=0.2))
    inner.frozen.set()
    t = threading.Thread(target=lambda: pytest.raises(NotFound, p.head, "k"), daemon=True)
    t.start()
    assert _wait(lambda: health.report(["mem"])["mem"]["state"] == "down"), "a hung request never put it down"
    assert "no answer to a probe" in health.report(["mem"])["mem"]["error"]
    assert "head under way" in health.report(["mem"])["mem"]["error"]
    inner.frozen.clear()
    inner.thawed.set()
    t.join(5)
    assert _wait(lambda: health.report(["mem"])["mem"]["state"] == "up")


def test_an_unanswered_request_puts_its_provider_down_and_an_answer_up():
    health = ProviderHealth()
    inner = MemoryProvider("mem")
    p = ObservedProvider(inner, Watcher(health))

    def unreachable(*args, **kwargs):
        raise ProviderUnavailable("cannot reach it")
    inner.delete = unreachable  # type: ignore[method-assign]
    with pytest.raises(ProviderUnavailable):
        p.delete("k")
    assert health.report(["mem"])["mem"]["error"] == "cannot reach it"
    with pytest.raises(NotFound):  # a missing key is an answer
        p.head("k")
    assert health.report(["mem"])["mem"]["state"] == "up"
    assert list(p.list("")) == []
    assert p.name == "mem" and p.inner is inner


def test_uploader_shows_a_failed_key_as_waiting_with_its_next_try():
    up = Uploader(workers=1, max_backoff=30.0)
    tries = []

    def sync(key: str) -> None:
        tries.append(key)
        raise ProviderUnavailable("down")
    up.start(UploadJobs(due_in=lambda k: 0.0, sync=sync, failed=lambda k, e, n: None))
    try:
        up.schedule("a")
        assert _wait(lambda: "a" in up.retries_due())
        attempts, due = up.retries_due()["a"]
        assert attempts == 1 and due > time.monotonic() - 0.01
        assert "a" not in up.in_flight()
    finally:
        up.stop(1.0)


def _core(tmp_path):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(f"providers:\n  mem: {{type: local, base_path: {tmp_path / 'unused'}}}\n"
                        f"cache: {{dir: {tmp_path / 'cache'}, writeback_delay: 1h}}\n")
    cfg = load_config(str(cfg_file))
    return build_core(cfg, Layout(cfg.layout, cfg.max_file_size), {"mem": MemoryProvider("mem")},
                      Journal(os.path.join(cfg.cache.dir, "journal.db")), DataFiles(cfg.cache.dir))


def test_a_scrape_reads_counters_and_never_walks_the_cache(tmp_path, monkeypatch):
    core = _core(tmp_path)
    core.start()
    try:
        parts = ART.split("/")
        for depth in range(1, len(parts) + 1):
            core.mkdir("/".join(parts[:depth]), 0o755, 0, 0)
        for i in range(3):
            fh = core.create(f"{ART}/f{i}", 0o644, 0, 0, True)
            core.write(fh, b"x" * 5000, 0)
            core.release(fh)
        core.unlink(f"{ART}/f2")
        time.sleep(0.3)  # the data file of f2 is deleted in the background
        full = core.status()
        calls: list[str] = []
        me = threading.get_ident()  # the core's own threads (spare data files, deletes) may touch the disk

        def counted(name, real):
            def call(*a, **k):
                if threading.get_ident() == me:
                    calls.append(name)
                return real(*a, **k)
            return call
        for name in ("scandir", "stat", "lstat", "listdir", "walk"):
            monkeypatch.setattr(os, name, counted(name, getattr(os, name)))
        counts = core.parts.status.counts()
        used = core.parts.evictor.estimate()
        render({**counts, "cache_bytes": used})
        monkeypatch.undo()
        assert calls == [], f"a scrape touched the cache folder: {calls}"
        for field in ("pending", "dirty_files", "dirty_bytes", "cached_files", "parked_changes", "uploading",
                      "open_files"):
            assert counts[field] == full[field], field
        assert counts["dirty_files"] == 2 and counts["dirty_bytes"] == 10_000
        assert used >= 0 and core.parts.evictor.estimate() <= core.parts.evictor.used
    finally:
        core.stop()


def test_estimate_subtracts_what_was_deleted_since_the_measure(tmp_path):
    data = DataFiles(str(tmp_path), spares=0)
    name, fd = data.create()
    os.write(fd, b"z" * 8192)
    os.close(fd)

    class Nobody:
        def eviction_candidates(self):
            return []

        def evict(self, e):
            return False

    from storefs.cache.eviction import Evictor
    ev = Evictor(Nobody(), 1 << 30, lambda: data.usage()[0], removed=data.removed_bytes)
    assert ev.estimate() == data.usage()[0] >= 8192
    ev.account(100)
    data.remove(name)
    assert ev.estimate() == max(0, data.usage()[0] + 100)


def test_a_refusal_repeated_at_once_is_logged_once(caplog):
    from storefs.fs import RefusalLog
    clock = [0.0]
    refusals = RefusalLog(window=2.0, clock=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="storefs.fs"):
        refusals.warning("%s %s: %s", "rename", "/a", "bad name")
        refusals.warning("%s %s: %s", "rename", "/a", "bad name")  # mv's second try
        refusals.warning("%s %s: %s", "rename", "/b", "bad name")
        clock[0] = 5.0
        refusals.warning("%s %s: %s", "rename", "/a", "bad name")  # a new attempt, later
    assert [r.getMessage() for r in caplog.records] == ["rename /a: bad name", "rename /b: bad name",
                                                        "rename /a: bad name"]


def test_metrics_server_listens_on_metrics_address_only():
    import urllib.error
    import urllib.request

    from storefs.metrics import MetricsServer
    server = MetricsServer(0, lambda: {"pending": 3}, address="127.0.0.2")
    server.start()
    try:
        assert server.url == f"http://127.0.0.2:{server.port}/metrics"
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            assert "storefs_pending_changes 3" in resp.read().decode()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
    finally:
        server.stop()


def test_scrapes_are_served_one_at_a_time_and_spaced():
    """Six scrape loops once took the daemon's interpreter from its FUSE threads (1,000 creates: 0.96 s
    alone, 24.7 s beside them): scrapes are now rendered by one thread, MIN_SCRAPE_SPACING apart."""
    import urllib.request

    from storefs.metrics import MIN_SCRAPE_SPACING, MetricsServer
    lock = threading.Lock()
    inside, most, starts = [0], [0], []

    def snapshot() -> dict:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            starts.append(time.monotonic())
        time.sleep(0.02)
        with lock:
            inside[0] -= 1
        return {"pending": 1}

    server = MetricsServer(0, snapshot)
    server.start()
    try:
        def scrape() -> None:
            with urllib.request.urlopen(server.url, timeout=10) as resp:
                assert b"storefs_pending_changes 1" in resp.read()
        threads = [threading.Thread(target=scrape) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.stop()
    assert most[0] == 1 and len(starts) == 6
    gaps = [b - a for a, b in zip(sorted(starts), sorted(starts)[1:], strict=False)]
    assert min(gaps) >= MIN_SCRAPE_SPACING * 0.9, gaps


def test_metrics_address_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"providers: {{local: {{type: local, base_path: {tmp_path}}}}}\n")
    assert load_config(str(path)).metrics_address == "127.0.0.1"
    path.write_text(f"providers: {{local: {{type: local, base_path: {tmp_path}}}}}\nmetrics_address: 0.0.0.0\n")
    assert load_config(str(path)).metrics_address == "0.0.0.0"


def test_status_and_flush_progress_name_a_provider_that_is_down(capsys):
    from storefs.cli import _FlushProgress, _print_providers
    down = {"state": "down", "since": time.time() - 42, "error": "timed out", "slow": False}
    st = {"providers": {"s3": "s3", "disk": "local"},
          "provider_health": {"s3": down, "disk": {"state": "up", "since": None, "error": None, "slow": False}}}
    _print_providers(st)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("providers:    s3 (s3) down since ") and out[0].endswith("(42s): timed out"), out
    assert out[1] == " " * 14 + "disk (local) up", out
    progress = _FlushProgress("storefs unmount", quiet=False)
    for _ in range(2):
        progress.show({"pending": 1, "dirty_bytes": 10, "errors": [], **st})
    assert capsys.readouterr().err.count("provider s3 is not answering (since ") == 1
