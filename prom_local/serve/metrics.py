"""GET /metrics: the service's counters in the Prometheus text format (prometheus_client writes it).

Counts are kept here as plain numbers under a lock and turned into metric families at scrape
time, together with what the engine's scheduler reports right then (busy sequences, its window),
so a scrape always shows the engine's own view, not a copy that could drift from it.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RATE_WINDOW_S = 30.0


class ServeMetrics:
    def __init__(self, snapshot: Callable[[], dict | None], admitted: Callable[[], int] = lambda: 0):
        self._snapshot = snapshot       # engine scheduler counts, or None while loading
        self._admitted = admitted       # the bounded queue's own count (bridge.Admission), read when asked
        self._lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()   # (endpoint, status)
        self.errors: collections.Counter = collections.Counter()     # code
        self.callers: collections.Counter = collections.Counter()    # key name ("" = refused key)
        self.prompt_tokens = 0
        self.reused_tokens = 0
        self.generated_tokens = 0
        self.cancelled = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        # `serve --ray`: one dict per engine (serve/cluster/front.py), shown with an `engine` label.
        self.engines: Callable[[], list[dict]] | None = None
        self.registry = CollectorRegistry()
        self.registry.register(self)

    # -- recording --------------------------------------------------------------------------------
    def request(self, endpoint: str, status: int, code: str | None = None) -> None:
        with self._lock:
            self.requests[(endpoint, str(status))] += 1
            if status >= 400:
                self.errors[code or str(status)] += 1

    @property
    def admitted(self) -> int:
        """Sequences admitted by the HTTP layer and not finished."""
        return self._admitted()

    def caller(self, name: str | None) -> None:
        """An authenticated call by the key `name` (None: a missing or wrong key). Names only:
        a key never reaches the metrics."""
        with self._lock:
            self.callers[name or ""] += 1

    def output(self, prompt: int, reused: int, generated: int, cancelled: bool) -> None:
        now = time.monotonic()
        with self._lock:
            self.prompt_tokens += prompt
            self.reused_tokens += reused
            self.generated_tokens += generated
            self.cancelled += int(cancelled)
            self._recent.append((now, generated))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(n for _, n in self._recent) / RATE_WINDOW_S

    # -- exposition -------------------------------------------------------------------------------
    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self):
        rows = self.engines() if self.engines is not None else []
        yield from _engine_families(rows)
        # With engines elsewhere (`serve --ray`) their tokens are counted there, not here.
        prompt, reused, generated = (getattr(self, k) + sum(r.get(k, 0) for r in rows) for k in
                                     ("prompt_tokens", "reused_tokens", "generated_tokens"))
        snap = self._snapshot()
        rate = self.tokens_per_second()
        with self._lock:
            requests = CounterMetricFamily("prom_local_requests", "HTTP requests by endpoint and status",
                                           labels=["endpoint", "status"])
            for (endpoint, status), n in sorted(self.requests.items()):
                requests.add_metric([endpoint, status], n)
            errors = CounterMetricFamily("prom_local_errors", "Requests answered with an error, by code",
                                         labels=["code"])
            for code, n in sorted(self.errors.items()):
                errors.add_metric([code], n)
            callers = CounterMetricFamily("prom_local_caller_requests", "Requests by API key name "
                                          "(--api-key-file; \"\" = missing or wrong key)", labels=["key_name"])
            for name, n in sorted(self.callers.items()):
                callers.add_metric([name], n)
            yield requests
            yield errors
            yield callers
            yield CounterMetricFamily("prom_local_prompt_tokens", "Prompt tokens of finished sequences",
                                      value=prompt)
            yield CounterMetricFamily("prom_local_reused_prompt_tokens",
                                      "Prompt tokens taken from the KV cache instead of computed",
                                      value=reused)
            yield CounterMetricFamily("prom_local_generated_tokens", "Tokens generated",
                                      value=generated)
            yield CounterMetricFamily("prom_local_cancelled_sequences",
                                      "Sequences ended early (client gone, stop string, shutdown)",
                                      value=self.cancelled)
            ratio = reused / prompt if prompt else 0.0
            yield GaugeMetricFamily("prom_local_prefix_reuse_ratio",
                                    "Share of prompt tokens reused from the KV cache", value=ratio)
            yield GaugeMetricFamily("prom_local_admitted_sequences",
                                    "Sequences admitted by the HTTP layer and not finished",
                                    value=self.admitted)
        yield GaugeMetricFamily("prom_local_generated_tokens_per_second",
                                f"Generated tokens per second over the last {RATE_WINDOW_S:.0f} s", value=rate)
        yield GaugeMetricFamily("prom_local_model_loaded", "1 once the model is loaded",
                                value=0 if snap is None else 1)
        if snap is not None:
            yield GaugeMetricFamily("prom_local_slots_busy", "Sequences decoding now", value=snap["busy"])
            yield GaugeMetricFamily("prom_local_slots_total", "Parallel sequences (--parallel)",
                                    value=snap["busy"] + snap["free"])
            yield GaugeMetricFamily("prom_local_host_cache_bytes", "Host memory holding earlier prompts' KV "
                                    "(--host-cache-mib)", value=snap["host_cache_bytes"])
            yield GaugeMetricFamily("prom_local_host_cache_entries", "Earlier prompts held in host memory",
                                    value=snap["host_cache_entries"])
            yield CounterMetricFamily("prom_local_host_cache_loads", "Prompts' KV loaded back from host memory",
                                      value=snap["host_cache_loads"])
            queued = max(0, self.admitted - snap["busy"])
            yield GaugeMetricFamily("prom_local_queue_depth", "Admitted sequences waiting for a slot",
                                    value=queued)


# (name, help, counter?) of the per-engine series of `serve --ray`, from the rows of
# serve/cluster/front.py's ClusterService._engine_rows.
ENGINE_SERIES = [
    ("ready", "1 while the engine answers and takes requests", False),
    ("requests", "Requests (HTTP or batch line) sent to the engine", True),
    ("busy", "Sequences decoding on the engine now", False),
    ("restarts", "Times Ray replaced the engine's process", True),
    ("retried", "Requests the engine held when it was lost (sent to another engine)", True),
    ("prompt_tokens", "Prompt tokens of the engine's finished sequences", True),
    ("reused_tokens", "Of those, taken from its KV cache", True),
    ("generated_tokens", "Tokens the engine generated", True),
]


def _engine_families(rows: list[dict]):
    for name, text, counter in ENGINE_SERIES:
        family = (CounterMetricFamily if counter else GaugeMetricFamily)(
            f"prom_local_engine_{name}", text, labels=["engine"])
        for row in rows:
            family.add_metric([row["engine"]], float(row.get(name, 0)))
        yield family
