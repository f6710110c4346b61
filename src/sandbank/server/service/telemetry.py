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

    def created(self, seconds: float, template: str) -> None:
        self._created.labels(template=template).inc()
        self._create_seconds.observe(seconds)
        self.running.inc()

    def failed(self) -> None:
        self._failed.inc()

    def killed(self, reason: str, was_running: bool) -> None:
        self._killed.labels(reason=reason).inc()
        if was_running:
            self.running.dec()

    def executed(self, seconds: float) -> None:
        self._exec_seconds.observe(seconds)
