"""``PrefectClient``: the calls this operator makes to one Prefect API, one class per resource
(prefect/pools.py, flow_runs.py, events.py) on the shared request machinery (prefect/rest.py)."""

from __future__ import annotations

from prefect_workpool_operator.prefect.events import EventsApi
from prefect_workpool_operator.prefect.flow_runs import FlowRunsApi
from prefect_workpool_operator.prefect.pools import WorkPoolsApi


class PrefectClient(WorkPoolsApi, FlowRunsApi, EventsApi):
    """The calls this operator makes to one Prefect API, with retries on 5xx/429."""
