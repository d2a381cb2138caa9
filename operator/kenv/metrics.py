"""Prometheus metrics (kopf has none of its own); served on KENV_METRICS_PORT."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

BUILDS_STARTED = Counter("kenv_builds_started_total", "Build Jobs created", ["builder"])
BUILDS_SUCCEEDED = Counter("kenv_builds_succeeded_total", "Builds whose image reached the registry")
BUILDS_FAILED = Counter("kenv_builds_failed_total", "Builds that failed", ["reason"])
BUILD_DURATION = Histogram(
    "kenv_build_duration_seconds", "Build Job start to completion",
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
CACHE_HITS = Counter("kenv_cache_hits_total", "Environments whose image was already in the registry")
BUILD_QUEUE = Gauge("kenv_build_queue_length", "Environments waiting for a free build slot")
ACTIVE_BUILDS = Gauge("kenv_active_builds", "Build Jobs running at the last check")
ADMISSIONS = Counter("kenv_admissions_total", "Pod admissions by result", ["result"])
ADMISSION_SECONDS = Histogram(
    "kenv_admission_seconds", "kenv's own work on one pod admission (index lookup, mutation), kopf's dispatch excluded",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
)
ADMISSION_REQUEST_SECONDS = Histogram(
    "kenv_admission_request_seconds",
    "An admission request on the lean protocol, from its last bytes read to its answer written: the server's own "
    "time (framing, JSON, the review, the answer), neither the wait for the request's bytes nor for the event loop",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1),
)
RECONCILE_SECONDS = Histogram("kenv_reconcile_seconds", "Time spent in one reconcile")
LOOP_STALLS = Counter("kenv_event_loop_stalls_total", "Times one callback held the event loop for over 2 s")
LEADER = Gauge("kenv_leader", "1 while this process reconciles (holds the reconciler Lease, or runs without election)")


def serve(port: int) -> None:
    if port:
        start_http_server(port)
