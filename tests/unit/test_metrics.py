"""The pieces of operating a mount that need no mount: metrics text, mount(8) options, metrics_port."""

from __future__ import annotations

import re

import pytest

from storefs.config import load_config
from storefs.errors import ConfigError, UsageError
from storefs.metrics import hit_ratio, render
from storefs.mount_helper import install, mount_args

LABEL = r'[a-z_]+="(?:[^"\\]|\\.)*"'
SAMPLE = re.compile(rf'^[a-z_]+(\{{{LABEL}(,{LABEL})*\}})? -?[0-9.e+-]+$')


def test_render_is_prometheus_text():
    st = {"pid": 7, "mountpoint": '/mnt/a "b"', "bytes_read": 10, "bytes_written": 20, "queue": 3,
          "cache_hit_ratio": 0.25, "operations": {"getattr": 5, "write": 2}, "operation_errors": {"getattr": 1}}
    text = render(st)
    assert text.endswith("\n")
    typed = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge", "histogram")
            assert name.endswith("_total") == (kind == "counter"), line
            typed.update([f"{name}_bucket", f"{name}_sum", f"{name}_count"] if kind == "histogram" else [name])
        elif not line.startswith("# HELP "):
            assert SAMPLE.match(line), line
            assert line.split("{")[0].split()[0] in typed, f"sample before its TYPE: {line}"
    assert "storefs_read_bytes_total 10" in text
    assert "storefs_written_bytes_total 20" in text
    assert "storefs_uploads_queued 3" in text
    assert "storefs_cache_hit_ratio 0.25" in text
    assert 'storefs_operations_total{op="getattr"} 5' in text
    assert 'storefs_operation_errors_total{op="getattr"} 1' in text
    assert 'mountpoint="/mnt/a \\"b\\""' in text


def test_hit_ratio():
    assert hit_ratio(0, 0) == 1.0
    assert hit_ratio(100, 0) == 1.0
    assert hit_ratio(100, 25) == 0.75
    assert hit_ratio(100, 400) == 0.0  # read-ahead fetched more than was read


def test_mount_args_map_options_and_skip_generic_ones():
    args, fake = mount_args(["/etc/storefs/c.yaml", "/mnt/s", "-o",
                             "defaults,_netdev,nofail,x-systemd.automount,tenant=acme,log_level=debug,"
                             "log_file=/var/log/s.log", "-n", "-t", "fuse.storefs"])
    assert args == ["mount", "-c", "/etc/storefs/c.yaml", "--tenant", "acme", "--log-level", "debug",
                    "--log-file", "/var/log/s.log", "/mnt/s"]
    assert not fake
    assert mount_args(["none", "/mnt/s", "-f"]) == (["mount", "/mnt/s"], True)
    assert mount_args(["c.yaml", "/m", "-s", "-o", "colour=blue"])[0] == ["mount", "-c", "c.yaml", "/m"]


def test_mount_args_pass_ro_through():
    assert mount_args(["c.yaml", "/m", "-o", "ro"])[0] == ["mount", "-c", "c.yaml", "-o", "ro", "/m"]


@pytest.mark.parametrize("argv, says", [
    (["c.yaml", "/m", "-o", "colour=blue"], "unknown option 'colour=blue'"),
    (["c.yaml"], "usage"),
    (["c.yaml", "/m", "-N", "1"], "-N"),
])
def test_mount_args_refusals(argv, says):
    with pytest.raises(UsageError, match=re.escape(says)):
        mount_args(argv)


def test_install_and_remove_helper(tmp_path):
    install(str(tmp_path))
    script = tmp_path / "mount.fuse.storefs"
    assert "-m storefs.mount_helper" in script.read_text()
    assert script.stat().st_mode & 0o111
    assert (tmp_path / "mount.storefs").resolve() == script.resolve()
    install(str(tmp_path))  # again: replaces, does not fail
    install(str(tmp_path), remove=True)
    assert not list(tmp_path.iterdir())


def _config(tmp_path, extra: str):
    path = tmp_path / "c.yaml"
    path.write_text(f"providers: {{local: {{type: local, base_path: {tmp_path}}}}}\n{extra}")
    return load_config(str(path))


def test_metrics_port_config(tmp_path):
    assert _config(tmp_path, "").metrics_port == 0
    assert _config(tmp_path, "metrics_port: 9187\n").metrics_port == 9187
    for bad, says in (("70000", "between 0 and 65535"), ("nine", "whole number")):
        with pytest.raises(ConfigError) as e:
            _config(tmp_path, f"metrics_port: {bad}\n")
        assert e.value.key == "metrics_port" and says in e.value.reason
        assert str(tmp_path / "c.yaml") in str(e.value)


def test_operation_counts_are_per_thread_and_lose_nothing_when_summed():
    """The FUSE edge counts every call from many threads at once: no count may be lost."""
    import threading

    from storefs.fs import OpCounts

    counts = OpCounts()
    counts.register("getattr")
    counts.register("read")
    counts.register("read")  # read and read_buf count under one name

    def run() -> None:
        for _ in range(5_000):
            counts.add("getattr")
        counts.add("read")

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts.items() == [("getattr", 40_000), ("read", 8)]
