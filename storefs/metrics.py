"""The counters of a running mount: one snapshot for `status --json`, and a Prometheus endpoint.

The endpoint is the standard library's http.server writing the Prometheus text format
(version 0.0.4), bound to metrics_address (127.0.0.1 by default): a few dozen metric lines do not
earn a dependency. A scrape reads counters only (Status.counts, the evictor's running byte count,
the latency histograms here): it costs the same whatever the cache holds.
"""

from __future__ import annotations

import bisect
import http.server
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# status field -> (metric name, type, help); counters end in _total, as Prometheus expects
_SCALARS = (
    ("bytes_read", "storefs_read_bytes_total", "counter", "Bytes returned to readers of the mount."),
    ("bytes_written", "storefs_written_bytes_total", "counter", "Bytes written into the mount."),
    ("bytes_fetched", "storefs_fetched_bytes_total", "counter", "Bytes fetched from providers into the cache."),
    ("bytes_warmed", "storefs_warmed_bytes_total", "counter",
     "Cached bytes read into the page cache ahead of random readers."),
    ("read_calls", "storefs_read_calls_total", "counter", "FUSE read requests."),
    ("write_calls", "storefs_write_calls_total", "counter", "FUSE write requests."),
    ("uploads_done", "storefs_uploads_total", "counter", "Changes carried to a provider."),
    ("upload_failures", "storefs_upload_failures_total", "counter", "Failed upload attempts (each is retried)."),
    ("upload_retries", "storefs_upload_retries_total", "counter", "Upload attempts that followed a failure."),
    ("cache_evictions", "storefs_cache_evictions_total", "counter",
     "Clean cached copies dropped to keep the cache bounded."),
    ("conflicts_total", "storefs_conflicts_total", "counter",
     "Changes that met a version another writer made first (kept both, or theirs kept), in this cache's journal."),
    ("queue", "storefs_uploads_queued", "gauge", "Changes scheduled or being uploaded."),
    ("parked_changes", "storefs_parked_changes", "gauge",
     "Changes the provider refused for good, kept in the cache until `storefs retry`."),
    ("uploading", "storefs_uploads_in_flight", "gauge", "Uploads under way."),
    ("pending", "storefs_pending_changes", "gauge", "Changes not yet in their provider."),
    ("dirty_files", "storefs_dirty_files", "gauge", "Files whose content is not yet in their provider."),
    ("dirty_bytes", "storefs_dirty_bytes", "gauge", "Bytes of those files."),
    ("open_files", "storefs_open_files", "gauge", "Files open through the mount."),
    ("cached_files", "storefs_cached_files", "gauge", "Files with data in the cache."),
    ("cache_bytes", "storefs_cache_bytes", "gauge", "Bytes used by the cache folder."),
    ("cache_max_bytes", "storefs_cache_max_bytes", "gauge", "The cache size limit (cache.max_size)."),
    ("cache_free_bytes", "storefs_cache_free_bytes", "gauge", "Free bytes on the cache disk."),
    ("cache_hit_ratio", "storefs_cache_hit_ratio", "gauge", "Share of bytes read that needed no provider fetch."),
)


#: latency bucket bounds in seconds: a local disk answers in microseconds, a frozen S3 server in a minute
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """A Prometheus histogram of durations in seconds, one series per label values (thread-safe)."""

    def __init__(self, name: str, help_: str, labels: tuple[str, ...],
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.help = help_
        self.labels = labels
        self.buckets = buckets
        self._lock = threading.Lock()  # protects _series (label values -> bucket counts, sum)
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, values: tuple[str, ...], seconds: float) -> None:
        """One more duration for the series of these label values."""
        i = bisect.bisect_left(self.buckets, seconds)  # le is inclusive: a value on a bound counts in it
        with self._lock:
            series = self._series.get(values)
            if series is None:
                series = self._series[values] = ([0] * (len(self.buckets) + 1), [0.0])
            series[0][i] += 1
            series[1][0] += seconds

    def lines(self) -> list[str]:
        """The exposition: HELP, TYPE, then cumulative _bucket lines, _sum and _count per series."""
        with self._lock:
            snap = {k: (list(c), s[0]) for k, (c, s) in sorted(self._series.items())}
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for values, (counts, total) in snap.items():
            base = ",".join(f'{n}="{_label(v)}"' for n, v in zip(self.labels, values, strict=True))
            sep = "," if base else ""
            running = 0
            for bound, n in zip((*self.buckets, float("inf")), counts, strict=True):
                running += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                out.append(f'{self.name}_bucket{{{base}{sep}le="{le}"}} {running}')
            out.append(f"{self.name}_sum{{{base}}} {total:.6f}" if base else f"{self.name}_sum {total:.6f}")
            out.append(f"{self.name}_count{{{base}}} {running}" if base else f"{self.name}_count {running}")
        return out


#: how long the kernel's requests took, per FUSE operation (kept by storefs.fs's edge wrapper)
FUSE_LATENCY = Histogram("storefs_fuse_request_seconds", "Time to answer a FUSE request, per operation.", ("op",))
#: how long provider requests took, per provider and operation (kept by storefs.view.observed)
PROVIDER_LATENCY = Histogram("storefs_provider_request_seconds",
                             "Time a provider request took (answered or failed), per provider and operation.",
                             ("provider", "op"))


def hit_ratio(bytes_read: int, bytes_fetched: int) -> float:
    """Share of the bytes read that were already cached (read-ahead can fetch more than is read)."""
    if bytes_read <= 0:
        return 1.0
    return max(0.0, 1.0 - bytes_fetched / bytes_read)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(st: dict, histograms: Iterable[Histogram] = (FUSE_LATENCY, PROVIDER_LATENCY)) -> str:
    """The Prometheus text exposition of a status snapshot, and of the latency histograms."""
    out: list[str] = []

    def family(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {value:g}" if isinstance(value, float) else f"{name}{labels} {value}"
                   for labels, value in samples)

    family("storefs_info", "gauge", "The mount this daemon serves.",
           [(f'{{mountpoint="{_label(str(st.get("mountpoint", "")))}",pid="{st.get("pid", "")}"}}', 1)])
    for field, name, kind, help_ in _SCALARS:
        if field in st:
            family(name, kind, help_, [("", st[field])])
    for field, name, help_ in (("operations", "storefs_operations_total", "FUSE requests, per operation."),
                               ("operation_errors", "storefs_operation_errors_total",
                                "FUSE requests answered with an errno (ENOENT included), per operation.")):
        ops = st.get(field) or {}
        family(name, "counter", help_, [(f'{{op="{_label(op)}"}}', n) for op, n in sorted(ops.items())])
    health = st.get("provider_health") or {}
    family("storefs_provider_down", "gauge", "1 while the provider does not answer (since a request got no answer, "
           "until one does), else 0.",
           [(f'{{provider="{_label(p)}"}}', int(h.get("state") == "down")) for p, h in sorted(health.items())])
    for h in histograms:
        out.extend(h.lines())
    return "\n".join(out) + "\n"


#: scrapes are served at most this often (seconds apart), a later one waits: Prometheus asks every
#: 15 s, and a scrape loop must not take the interpreter from the FUSE threads
MIN_SCRAPE_SPACING = 0.05
#: seconds a scrape client may take to send its request before the server drops it (scrapes are served one at a time)
CLIENT_TIMEOUT = 5.0


class _Server(http.server.HTTPServer):
    """Scrapes one at a time, MIN_SCRAPE_SPACING apart: however many scrapers there are and however
    fast they ask, metrics take a small share of the daemon's interpreter from the FUSE threads."""

    next_scrape = 0.0  # monotonic time before which the next scrape waits


class _V6Server(_Server):
    """The same server on an IPv6 address (metrics_address: "::1", "::")."""

    address_family = socket.AF_INET6


class MetricsServer:
    """GET /metrics on address:port; binds at construction, so a taken port stops the mount early."""

    def __init__(self, port: int, snapshot: Callable[[], dict], address: str = "127.0.0.1") -> None:
        class _Handler(http.server.BaseHTTPRequestHandler):
            timeout = CLIENT_TIMEOUT

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "storefs serves /metrics only")
                    return
                server = self.server
                assert isinstance(server, _Server)
                time.sleep(max(0.0, server.next_scrape - time.monotonic()))
                server.next_scrape = time.monotonic() + MIN_SCRAPE_SPACING
                try:
                    body = render(snapshot()).encode()
                except Exception:  # a scrape must not take the daemon down
                    log.exception("building /metrics failed")
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("metrics: " + format, *args)

        server_class = _V6Server if ":" in address else _Server
        self._server = server_class((address.strip("[]"), port), _Handler)
        self.address = address
        self.port = self._server.server_address[1]
        self._serving = False

    def start(self) -> None:
        """Serve in a daemon thread (called from FUSE init: no thread before the fork)."""
        self._serving = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                         name="storefs-metrics", daemon=True).start()
        log.info("metrics on %s", self.url)

    @property
    def url(self) -> str:
        """Where to scrape (an IPv6 address in brackets)."""
        host = self.address.strip("[]")
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/metrics"

    def stop(self) -> None:
        if self._serving:  # shutdown() waits for serve_forever, which never ran otherwise
            self._server.shutdown()
        self._server.server_close()
