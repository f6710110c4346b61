"""Prometheus metrics of the service, kept in a registry per app instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Telemetry:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._created = Counter(
            "sandbank_sandboxes_created", "Sandboxes created", ["template"], registry=r
        )
        self._failed = Counter("sandbank_sandbox_create_failures", "Failed creates", registry=r)
        self._killed = Counter(
            "sandbank_sandboxes_killed", "Sandboxes killed", ["reason"], registry=r
        )
        self._create_seconds = Histogram(
            "sandbank_sandbox_create_seconds",
            "Time for the runtime to start a sandbox",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self._exec_seconds = Histogram(
            "sandbank_exec_seconds",
            "Duration of commands run through exec",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
            registry=r,
        )
        self.running = Gauge("sandbank_sandboxes_running", "Sandboxes running now", registry=r)
        # The warm pool: hit rate = hits / (hits + misses).
        self.pool_size = Gauge(
            "sandbank_pool_size", "Pooled sandboxes ready to hand out", ["template"], registry=r
        )
        self._pool_hits = Counter(
            "sandbank_pool_hits", "Creates served from the warm pool", ["template"], registry=r
        )
        self._pool_misses = Counter(
            "sandbank_pool_misses",
            "Creates that started a sandbox cold (reason: empty, failed, not_pooled)",
            ["template", "reason"],
            registry=r,
        )
        self._pool_refill_failures = Counter(
            "sandbank_pool_refill_failures", "Failed attempts to top up the pool", registry=r
        )
        self._handout_seconds = Histogram(
            "sandbank_pool_handout_seconds",
            "Time to claim a pooled sandbox and give it the requested limits",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=r,
        )

    def created(self, seconds: float, template: str) -> None:
        self._created.labels(template=template).inc()
        self._create_seconds.observe(seconds)
        self.running.inc()

    def handed_out(self, seconds: float, template: str) -> None:
        self._created.labels(template=template).inc()
        self._pool_hits.labels(template=template).inc()
        self._handout_seconds.observe(seconds)
        self.running.inc()

    def missed(self, template: str, reason: str) -> None:
        self._pool_misses.labels(template=template, reason=reason).inc()

    def pool_member_started(self, seconds: float) -> None:
        self._create_seconds.observe(seconds)

    def pool_refill_failed(self) -> None:
        self._pool_refill_failures.inc()

    def failed(self) -> None:
        self._failed.inc()

    def killed(self, reason: str, was_running: bool) -> None:
        self._killed.labels(reason=reason).inc()
        if was_running:
            self.running.dec()

    def executed(self, seconds: float) -> None:
        self._exec_seconds.observe(seconds)
