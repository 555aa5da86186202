"""Compatibility surface: the AWS adapter now lives in the ``aws`` package, one module per
service over one transport (``aws.transport``, ``aws.ecs``, ``aws.cloudwatch``,
``aws.autoscaling``); what ECS's answers mean lives in ``core.infrastructure``.

New code imports from ``aws`` (or its modules); this module only re-exports the old names.
"""

from __future__ import annotations

from .aws import *  # noqa: F403
from .aws import AwsClient, AwsError  # noqa: F401  (explicit for type checkers)
from .aws.autoscaling import SCALABLE_DIMENSION, _name  # noqa: F401
from .aws.ecs import DESCRIBE_TASKS_MAX, LIST_TASKS_MAX, DEFAULT_MAX_LIST_PAGES  # noqa: F401
from .aws.ecs import unknown_detail as _unknown_detail  # noqa: F401
from .aws.transport import DEFAULT_CALLS_PER_CYCLE, DEFAULT_MAX_ATTEMPTS, chunks as _chunks  # noqa: F401
from .core.infrastructure import (  # noqa: F401
    GONE_STATUSES,
    LIVE_STATUSES,
    PID_SEPARATOR,
    RUN_ID_TAG,
    parse_pid,
    task_liveness,
)
