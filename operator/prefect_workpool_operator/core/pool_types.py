"""Which of the policy's features fit the work pool's type.

- ``ecs`` (a pool served by prefect-aws workers): everything.
- other worker pools (``process``, ``kubernetes``, ``docker``, ...): stale-run recovery by
  the claimer rule alone (no ECS task to verify: runs that show signs of infrastructure
  wait for ``hardTimeout``) and job-template defaults; no worker scaling, no ECS checks.
- push (``*:push``) and managed (``prefect:managed``) pools: Prefect itself submits the
  runs, there is no worker to claim them or to scale: only job-template defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect_workpool_operator.core.conditions import Condition

POOL_TYPE_SUPPORTED = "PoolTypeSupported"
UNSUPPORTED_POOL_TYPE = "UnsupportedPoolType"
ECS = "ecs"


@dataclass(frozen=True)
class Features:
    """What may run for a pool of this type."""

    pool_type: str
    ecs: bool  # scaling, ECS task verification, ECS template checks
    recovery: bool  # stale-run recovery (claimer rule; with ECS verification only when ``ecs``)

    @property
    def kind(self) -> str:
        if self.ecs:
            return "an ECS worker pool"
        return "a worker pool" if self.recovery else "a push or managed pool (no workers)"


def features_for(pool_type: str | None) -> Features:
    kind = (pool_type or ECS).strip().lower()
    if kind == ECS:
        return Features(kind, ecs=True, recovery=True)
    if kind.endswith(":push") or kind.endswith(":managed") or kind == "prefect-managed":
        return Features(kind, ecs=False, recovery=False)
    return Features(kind, ecs=False, recovery=True)


def pool_type_condition(
    features: Features, *, pool: str, stale_runs: bool, ecs: bool, scaling: bool, job_template: bool
) -> Condition:
    """True when every feature the spec asks for applies; else False naming what does not."""
    applies, skipped = [], []
    for wanted, name, ok in (
        (stale_runs, "staleRuns" + (" (claimer rule, no ECS task verification)"
                                    if features.recovery and not features.ecs else ""), features.recovery),
        (ecs, "ecs", features.ecs),
        (scaling, "scaling", features.ecs),
        (job_template, "jobTemplate", True),
    ):
        if wanted:
            (applies if ok else skipped).append(name)
    head = f"Work pool {pool!r} is of type {features.pool_type!r}, {features.kind}"
    done = f"applied: {', '.join(applies) or 'none'}"
    if skipped:
        return Condition(POOL_TYPE_SUPPORTED, "False", UNSUPPORTED_POOL_TYPE,
                         f"{head}; not applied (nothing done): {', '.join(skipped)}; {done}. "
                         "Remove those sections or point the policy at an ECS pool.")
    return Condition(POOL_TYPE_SUPPORTED, "True", "Supported", f"{head}; {done}.")
