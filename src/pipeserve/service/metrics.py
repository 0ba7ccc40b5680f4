"""Prometheus metrics, one registry per app (no process-global state), served at `GET /metrics`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeserve.service.models import ModelRegistry
from pipeserve.store.logwriter import LogWriter

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30, 60)


class Metrics:
    def __init__(self, models: ModelRegistry) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pipeserve_requests",
            "Chat completion requests by model and HTTP status.",
            ["model", "status"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "pipeserve_prompt_tokens", "Prompt tokens of completed requests.", ["model"], registry=self.registry
        )
        self.cached_tokens = Counter(
            "pipeserve_prompt_cached_tokens",
            "Prompt tokens whose KV entries were reused from the prefix cache.",
            ["model"],
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "pipeserve_completion_tokens", "Generated tokens.", ["model"], registry=self.registry
        )
        self.ttft = Histogram(
            "pipeserve_time_to_first_token_seconds",
            "From the request reaching the engine to its first generated token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.itl = Histogram(
            "pipeserve_inter_token_latency_seconds",
            "Between consecutive engine steps that gave a request tokens.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_totals: dict[str, list[int]] = {}  # model -> [prompt tokens, cached tokens]
        self.registry.register(_EngineCollector(models, self.prompt_totals))
        # Labelled children, looked up once per label: a lookup costs more than an observation.
        self._children: dict[tuple[Counter | Histogram, tuple[str, ...]], Any] = {}

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def count_request(self, model: str, status: str) -> None:
        self._child(self.requests, model, status).inc()

    def latencies(self, model: str) -> tuple[Histogram, Histogram]:
        """The time-to-first-token and inter-token histograms of `model`."""
        return self._child(self.ttft, model), self._child(self.itl, model)

    def watch_log_writer(self, writer: LogWriter) -> None:
        self.registry.register(_LogWriterCollector(writer))

    def record_usage(self, model: str, prompt: int, cached: int, completion: int) -> None:
        self._child(self.prompt_tokens, model).inc(prompt)
        self._child(self.cached_tokens, model).inc(cached)
        self._child(self.completion_tokens, model).inc(completion)
        totals = self.prompt_totals.setdefault(model, [0, 0])
        totals[0] += prompt
        totals[1] += cached


class _EngineCollector(Collector):
    """Engine state, read at scrape time."""

    def __init__(self, models: ModelRegistry, prompt_totals: dict[str, list[int]]) -> None:
        self.models = models
        self.prompt_totals = prompt_totals

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("pipeserve_running_sequences", "Sequences being decoded.", labels=["model"])
        queued = GaugeMetricFamily("pipeserve_queue_depth", "Requests waiting for a free sequence.", labels=["model"])
        kv = GaugeMetricFamily(
            "pipeserve_kv_cache_usage_ratio",
            "Share of KV cache cells held by running sequences and the prefix cache.",
            labels=["model"],
        )
        hits = GaugeMetricFamily(
            "pipeserve_prefix_cache_hit_ratio",
            "Share of all prompt tokens since start whose KV entries came from the prefix cache.",
            labels=["model"],
        )
        for model, engine in self.models.engines():
            stats = engine.stats()
            running.add_metric([model], stats.running_sequences)
            queued.add_metric([model], stats.waiting_requests)
            occupied = stats.kv_cells_used + stats.kv_cells_cached
            kv.add_metric([model], occupied / stats.kv_cells_total if stats.kv_cells_total else 0)
            prompt, cached = self.prompt_totals.get(model, [0, 0])
            hits.add_metric([model], cached / prompt if prompt else 0)
        yield from (running, queued, kv, hits)


class _LogWriterCollector(Collector):
    """Group commit at work (rows per commit is how many requests share one transaction), and the logs that
    wait while the store is away."""

    def __init__(self, writer: LogWriter) -> None:
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        commits = CounterMetricFamily("pipeserve_log_commits", "Transactions that stored request logs.")
        commits.add_metric([], self.writer.commits)
        rows = CounterMetricFamily("pipeserve_log_rows", "Request logs stored.")
        rows.add_metric([], self.writer.rows)
        up = GaugeMetricFamily(
            "pipeserve_store_up", "1 while the store (database) can be reached, 0 while request logs are held."
        )
        up.add_metric([], 1 if self.writer.available else 0)
        backlog = GaugeMetricFamily(
            "pipeserve_log_backlog_rows",
            "Request logs accepted and not yet stored: waiting for a commit, held in memory, or spilled to disk.",
        )
        backlog.add_metric([], self.writer.backlog)
        dropped = CounterMetricFamily(
            "pipeserve_log_dropped_rows",
            "Request logs lost: the store was away with the buffer and spill file full, or it refused a held log.",
        )
        dropped.add_metric([], self.writer.dropped)
        yield from (commits, rows, up, backlog, dropped)
