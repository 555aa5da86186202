"""Prometheus metrics: the same figures as each policy's status, plus the operator's own work.

Gauges are set from the status a cycle wrote, so Prometheus and ``kubectl describe``
cannot disagree. Served by ``prometheus_client`` on PWO_METRICS_PORT (/metrics).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, start_http_server

# No `<name>_created` series beside each counter and histogram: nothing here queries them
# (increase() and rate() do without), and with ~10 per policy they were a fifth of every scrape.
disable_created_metrics()

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
        self.started = Gauge("pwo_cycle_started_timestamp_seconds", "When the policy's last cycle started (Unix time): "
                             "alert when time() minus it exceeds a few intervals.", ("namespace", "policy"), registry=r)
        self.start_delay = Histogram("pwo_cycle_start_delay_seconds", "How late cycles started after their scheduled "
                                     "slot (an overloaded operator or Prefect makes them later).", registry=r,
                                     buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self._policies: dict[tuple[str, str], _PolicySeries] = {}
        self._pool_counters = (self.recovered, self.changed, self.recovered_by_reason, self.exhausted)

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)

    async def on_prefect_response(self, response: httpx.Response) -> None:
        """httpx response hook of the shared Prefect client."""
        self.prefect_requests.labels(response.request.method, str(response.status_code)).inc()

    def record_cycle(self, meta: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any], seconds: float) -> None:
        """Work proportional to what changed since the policy's last cycle: unchanged gauges are
        not set again, and a policy's series are found in its own record, never by scanning all."""
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        pool = str(((spec.get("prefect") or {}).get("workPool")) or "")
        key = (ns, name, pool)
        self.duration.labels(ns, name).observe(seconds)
        self._note(ns, name, self.duration, (ns, name))
        record = self._policies.setdefault((ns, name), _PolicySeries())
        gauges = self._gauges(key, status)
        for (metric, labels), value in gauges.items():
            if record.gauges.get((metric, labels)) != value:
                metric.labels(*labels).set(value)
                record.series.add((metric, labels))
        for metric, labels in set(record.gauges) - set(gauges):  # gone from the status (or the pool renamed)
            metric.remove(*labels)
            record.series.discard((metric, labels))
        record.gauges = gauges
        if record.pool != pool:  # a renamed pool: its counters go with it (rare, so a scan of this policy's own)
            for metric, labels in [x for x in record.series if x[0] in self._pool_counters and x[1][2] != pool]:
                metric.remove(*labels)
                record.series.discard((metric, labels))
            record.pool = pool
        stale = status.get("staleRuns") or {}
        if stale:
            last = status.get("lastRecovery") or {}  # present only when this cycle changed runs
            self._count(ns, name, self.recovered, key, stale.get("recovered", 0))
            for action in ("rescheduled", "crashed", "cancelled"):
                self._count(ns, name, self.changed, (*key, action), last.get(action, 0))
            for reason, count in (last.get("reasons") or {}).items():
                self._count(ns, name, self.recovered_by_reason, (*key, reason), count)
            self._count(ns, name, self.exhausted, key, last.get("exhausted", 0))
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        if ready is not None and ready.get("status") == "False":
            self._count(ns, name, self.errors, (ns, name, str(ready.get("reason"))), 1)

    def _gauges(self, key: tuple[str, str, str], status: Mapping[str, Any]) -> dict[tuple[Any, tuple[str, ...]], float]:
        """Every gauge series the status implies, with its value: one series per condition type."""
        out: dict[tuple[Any, tuple[str, ...]], float] = {}
        for state, value in (status.get("runs") or {}).items():
            out[(self.runs, (*key, state))] = value
        for state, value in (status.get("workers") or {}).items():
            out[(self.workers, (*key, state))] = value
        scaling = status.get("scaling") or {}
        for count in ("desired", "running", "pending"):
            if scaling.get(count) is not None:
                out[(self.ecs_tasks, (*key, count))] = scaling[count]
        if scaling.get("recommendation") is not None:
            out[(self.recommended, key)] = scaling["recommendation"]
        stale = status.get("staleRuns") or {}
        if stale:
            out[(self.stale, key)] = stale.get("stale", 0)
        for c in status.get("conditions") or []:
            out[(self.condition, (*key, str(c.get("type")), str(c.get("status")), str(c.get("reason"))))] = 1
        return out

    def cycle_started(self, meta: Mapping[str, Any], *, at: float, late: float | None = None) -> None:
        """``late``: seconds after its scheduled slot (None: not scheduled, e.g. a spec edit)."""
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        self.cycles.labels(ns, name).inc()
        self.started.labels(ns, name).set(at)
        self._note(ns, name, self.cycles, (ns, name))
        self._note(ns, name, self.started, (ns, name))
        if late is not None:
            self.start_delay.observe(max(0.0, late))

    def _note(self, ns: str, name: str, metric: Any, labels: tuple[str, ...]) -> None:
        self._policies.setdefault((ns, name), _PolicySeries()).series.add((metric, labels))

    def _count(self, ns: str, name: str, counter: Counter, labels: tuple[str, ...], amount: float) -> None:
        """Add to a counter; a new series is created at 0 once (increase() cannot see a
        series' first value), and an unchanged one costs nothing."""
        record = self._policies.setdefault((ns, name), _PolicySeries())
        if amount or (counter, labels) not in record.series:
            counter.labels(*labels).inc(amount)
            record.series.add((counter, labels))

    def record_aws_calls(self, calls: Mapping[str, int]) -> None:
        for operation, count in calls.items():
            if count:
                self.aws_requests.labels(operation).inc(count)

    def record_failure(self, meta: Mapping[str, Any], reason: str) -> None:
        """A cycle that ended before it had a status (an unexpected error) still counts as failed."""
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        self._count(ns, name, self.errors, (ns, name, reason), 1)

    def record_aws_budget(self, meta: Mapping[str, Any], refused: int) -> None:
        """Calls the spent AWS call budget refused this cycle (the cycle counts once)."""
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        self._count(ns, name, self.aws_budget_exhausted, (ns, name), 1 if refused else 0)

    def forget(self, meta: Mapping[str, Any]) -> None:
        """A deleted policy's series go away (its own record says which)."""
        record = self._policies.pop((str(meta.get("namespace", "")), str(meta.get("name", ""))), None)
        for metric, labels in record.series if record else ():
            try:
                metric.remove(*labels)
            except KeyError:
                pass


@dataclass
class _PolicySeries:
    """The series one policy has set, and the gauge values its last cycle exported."""

    series: set[tuple[Any, tuple[str, ...]]] = field(default_factory=set)
    gauges: dict[tuple[Any, tuple[str, ...]], float] = field(default_factory=dict)
    pool: str | None = None  # the pool its counters are labelled with
