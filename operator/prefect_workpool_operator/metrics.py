"""Prometheus metrics: the same figures as each policy's status, plus the operator's own work.

Gauges are set from the status a cycle wrote, so Prometheus and ``kubectl describe``
cannot disagree. Served by ``prometheus_client`` on PWO_METRICS_PORT (/metrics).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

POLICY = ("namespace", "policy", "pool")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs = Gauge("pwo_pool_runs", "Runs of the pool by state (late = due SCHEDULED).", (*POLICY, "state"), registry=r)
        self.workers = Gauge("pwo_pool_workers", "Prefect workers of the pool by heartbeat status.", (*POLICY, "status"), registry=r)
        self.ecs_tasks = Gauge("pwo_worker_service_tasks", "The ECS worker service's task counts.", (*POLICY, "count"), registry=r)
        self.recommended = Gauge("pwo_scaling_recommended_workers", "Workers the backlog wants, within bounds.", POLICY, registry=r)
        self.stale = Gauge("pwo_stale_runs", "Runs PENDING longer than pendingTimeout in the last cycle.", POLICY, registry=r)
        self.recovered = Counter("pwo_runs_recovered", "Stale runs changed by the operator.", POLICY, registry=r)
        # The same runs split two ways (status.lastRecovery): the state given, and why each was recoverable.
        self.changed = Counter("pwo_runs_changed", "Stale runs changed, by action (rescheduled, crashed, cancelled).",
                               (*POLICY, "action"), registry=r)
        self.recovered_by_reason = Counter(
            "pwo_runs_recovered_by_reason", "Stale runs changed, by why (TaskGone, ClaimerGone, HardTimeout...).",
            (*POLICY, "reason"), registry=r)
        self.exhausted = Counter("pwo_runs_exhausted", "Runs past maxRequeuesPerRun given onExhausted (MarkCrashed...).",
                                 POLICY, registry=r)
        self.aws_budget_exhausted = Counter(
            "pwo_aws_call_budget_exhausted", "Cycles whose AWS call budget ran out (some calls were not made).",
            ("namespace", "policy"), registry=r)
        self.condition = Gauge("pwo_condition", "1 for each condition's current status.", (*POLICY, "type", "status", "reason"), registry=r)
        self.duration = Histogram("pwo_reconcile_duration_seconds", "Time of one reconcile cycle.", ("namespace", "policy"),
                                  registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.errors = Counter("pwo_reconcile_errors", "Cycles that ended with Ready=False, by reason.",
                              ("namespace", "policy", "reason"), registry=r)
        self.prefect_requests = Counter("pwo_prefect_requests", "HTTP requests to Prefect APIs.", ("method", "code"), registry=r)
        self.aws_requests = Counter("pwo_aws_requests", "Requests sent to AWS (retries included).", ("operation",), registry=r)
        self.leader = Gauge("pwo_leader", "1 while this replica holds its shard's Lease (acts), 0 on standby.", ("shard",), registry=r)
        self.cycles = Counter("pwo_cycles", "Cycles this replica started, by policy.", ("namespace", "policy"), registry=r)

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)

    async def on_prefect_response(self, response: httpx.Response) -> None:
        """httpx response hook of the shared Prefect client."""
        self.prefect_requests.labels(response.request.method, str(response.status_code)).inc()

    def record_cycle(self, meta: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any], seconds: float) -> None:
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        pool = str(((spec.get("prefect") or {}).get("workPool")) or "")
        key = (ns, name, pool)
        self.duration.labels(ns, name).observe(seconds)
        for state, value in (status.get("runs") or {}).items():
            self.runs.labels(*key, state).set(value)
        for state, value in (status.get("workers") or {}).items():
            self.workers.labels(*key, state).set(value)
        scaling = status.get("scaling") or {}
        for count in ("desired", "running", "pending"):
            if scaling.get(count) is not None:
                self.ecs_tasks.labels(*key, count).set(scaling[count])
        if scaling.get("recommendation") is not None:
            self.recommended.labels(*key).set(scaling["recommendation"])
        stale = status.get("staleRuns") or {}
        if stale:
            self.stale.labels(*key).set(stale.get("stale", 0))
            self.recovered.labels(*key).inc(stale.get("recovered", 0))
            # Counters start at 0 with recovery, not at their first run: rate() and increase()
            # cannot see a series' first value, so a first increment would go unnoticed.
            last = status.get("lastRecovery") or {}  # present only when this cycle changed runs
            for action in ("rescheduled", "crashed", "cancelled"):
                self.changed.labels(*key, action).inc(last.get(action, 0))
            for reason, count in (last.get("reasons") or {}).items():
                self.recovered_by_reason.labels(*key, reason).inc(count)
            self.exhausted.labels(*key).inc(last.get("exhausted", 0))
        self._conditions(key, status.get("conditions") or [])

    def _conditions(self, key: tuple[str, str, str], conditions: list[Mapping[str, Any]]) -> None:
        # One series per type: drop the previous status/reason of this policy's types first.
        types = {c.get("type") for c in conditions}
        for labels in list(self.condition._metrics):  # noqa: SLF001 (prometheus_client has no per-label query)
            if labels[:3] == key and labels[3] in types:
                self.condition.remove(*labels)
        for c in conditions:
            self.condition.labels(*key, c.get("type"), c.get("status"), c.get("reason")).set(1)
            if c.get("type") == "Ready" and c.get("status") == "False":
                self.errors.labels(key[0], key[1], str(c.get("reason"))).inc()

    def record_aws_calls(self, calls: Mapping[str, int]) -> None:
        for operation, count in calls.items():
            if count:
                self.aws_requests.labels(operation).inc(count)

    def record_failure(self, meta: Mapping[str, Any], reason: str) -> None:
        """A cycle that ended before it had a status (an unexpected error) still counts as failed."""
        self.errors.labels(str(meta.get("namespace", "")), str(meta.get("name", "")), reason).inc()

    def record_aws_budget(self, meta: Mapping[str, Any], refused: int) -> None:
        """Calls the spent AWS call budget refused this cycle (the cycle counts once)."""
        counter = self.aws_budget_exhausted.labels(str(meta.get("namespace", "")), str(meta.get("name", "")))
        counter.inc(1 if refused else 0)  # created at 0 on the first cycle, for increase()

    def forget(self, meta: Mapping[str, Any]) -> None:
        """A deleted policy's series go away."""
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        for metric in (self.runs, self.workers, self.ecs_tasks, self.recommended, self.stale, self.recovered,
                       self.changed, self.recovered_by_reason, self.exhausted, self.aws_budget_exhausted,
                       self.condition, self.duration, self.errors):
            for labels in list(metric._metrics):  # noqa: SLF001
                if labels[:2] == (ns, name):
                    metric.remove(*labels)
