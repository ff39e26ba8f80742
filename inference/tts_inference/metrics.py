"""The server's Prometheus metrics: one module, one registry per app, prefix tts_.

Labels are bounded: route (a fixed set), status (an HTTP code), format (six
values), outcome. Seconds and bytes are base units; counters end in _total.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("tts_inference.metrics")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
JOB_STATES = ("queued", "running", "succeeded", "failed")


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder`` (symlinks to it followed, none inside)."""

    def fail(exc: OSError) -> None:
        raise exc

    total = 0
    for root, _dirs, files in os.walk(folder.resolve(), onerror=fail):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                total += os.stat(path).st_size
    return total


class CacheVolumeCollector(Collector):
    """tts_cache_volume_bytes{kind="used"|"capacity"}: statvfs of the cache volume, per scrape.

    The figures the kubelet's volume stats report (capacity = blocks x fragment size,
    used = capacity less free blocks), read from inside the pod, so they need no
    node scrape. Nothing is exported until a path is set, nor while it cannot be read
    (logged once).
    """

    NAME = "tts_cache_volume_bytes"
    HELP = "Bytes used and capacity of the filesystem holding the cache volume, by kind."

    def __init__(self) -> None:
        self.path: Path | None = None
        self._warned = False

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["kind"])

    def collect(self) -> Iterator[Metric]:
        if self.path is None:
            return
        try:
            st = os.statvfs(self.path)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot read the cache volume's size at %s: %s", self.path, exc)
                self._warned = True
            return
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["kind"])
        family.add_metric(["used"], (st.f_blocks - st.f_bfree) * st.f_frsize)
        family.add_metric(["capacity"], st.f_blocks * st.f_frsize)
        yield family


# Why queued work is dropped before it runs (queue.py): its client went away, or it
# waited past its deadline.
DROP_CANCELLED = "cancelled"
DROP_DEADLINE = "deadline"
DROP_REASONS = (DROP_CANCELLED, DROP_DEADLINE)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tts_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "tts_request_duration_seconds",
            "HTTP request latency, to the last byte.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_byte_seconds = Histogram(
            "tts_time_to_first_byte_seconds",
            "Time from request to the first audio byte.",
            ["format"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "tts_queue_depth", "Synthesis requests waiting in the queue.", registry=r
        )
        self.running = Gauge(
            "tts_requests_running",
            "Synthesis requests in the batches running on the device.",
            registry=r,
        )
        self.inflight = Gauge(
            "tts_http_requests_in_flight",
            "API requests being received or answered; a draining server waits for them.",
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "tts_queue_wait_seconds",
            "Time a synthesis request waited before its batch started.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tts_batch_size",
            "Requests per batch run on the device.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "tts_batch_duration_seconds",
            "Device time per batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "tts_queue_rejected",
            "Synthesis requests refused because the queue was full.",
            registry=r,
        )
        self.dropped = Counter(
            "tts_queue_dropped",
            "Queued work dropped before it ran, by reason.",
            ["reason"],
            registry=r,
        )
        # Every reason is exported from the start (at 0), so a rate over it is a
        # number before the first drop rather than no series at all.
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        self.audio_seconds = Counter(
            "tts_audio_seconds", "Seconds of audio generated.", ["format"], registry=r
        )
        self.rtf = Histogram(
            "tts_realtime_factor",
            "Synthesis seconds per second of audio, per request.",
            buckets=RTF_BUCKETS,
            registry=r,
        )
        self.load_seconds = Gauge(
            "tts_model_load_seconds", "Seconds the model took to load.", registry=r
        )
        self.warmup_seconds = Gauge(
            "tts_warmup_seconds", "Seconds the warm-up synthesis took.", registry=r
        )
        self.ready = Gauge(
            "tts_ready",
            "1 when the model is loaded and warm and the server is not draining.",
            registry=r,
        )
        self.gpu_memory = Gauge(
            "tts_gpu_memory_bytes", "GPU memory allocated by the model process.", registry=r
        )
        self.info = Info("tts_build", "Version, model, device and dtype.", registry=r)
        self.model_cache_bytes = Gauge(
            "tts_model_cache_bytes",
            "Bytes of the loaded model folder on disk (its symlink resolved), set at load.",
            registry=r,
        )
        self.cache_volume = CacheVolumeCollector()
        r.register(self.cache_volume)
        self.jobs = Gauge(
            "tts_jobs",
            "Jobs this process holds, by state (finished ones are kept for a while).",
            ["state"],
            registry=r,
        )
        for state in JOB_STATES:
            self.jobs.labels(state)
        self.jobs_finished = Counter(
            "tts_jobs_finished",
            "Jobs that ended, by outcome (succeeded, failed, cancelled).",
            ["outcome"],
            registry=r,
        )
        self.job_seconds = Histogram(
            "tts_job_duration_seconds",
            "Time a job ran, from start to its outcome.",
            ["outcome"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.voice_cache_hits = Counter(
            "tts_voice_cache_hits",
            "Voices found in memory or in the cache volume.",
            registry=r,
        )
        self.voice_cache_misses = Counter(
            "tts_voice_cache_misses",
            "Voices that had to be fetched from the bucket.",
            registry=r,
        )
        self.upload_bytes = Counter(
            "tts_upload_bytes",
            "Bytes written to the bucket, by what (job_output, record, voice).",
            ["what"],
            registry=r,
        )

    def track_gpu_memory(self, read: Callable[[], float]) -> None:
        self.gpu_memory.set_function(read)

    def track_cache(self, model_dir: Path, cache_dir: Path | None) -> None:
        """Set tts_model_cache_bytes once, and read the volume of ``cache_dir`` (else of
        the model folder) at each scrape. A folder that cannot be read is logged, not fatal."""
        try:
            self.model_cache_bytes.set(folder_bytes(model_dir))
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            log.warning("cannot measure the model folder %s: %s", model_dir, exc)
        self.cache_volume.path = cache_dir if cache_dir is not None else model_dir
