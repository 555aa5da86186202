"""One exception hierarchy: every failure an adapter reports carries a condition reason.

Adapters raise subclasses (``AwsError``, ``PrefectError``, ``SecretError``); the cycle
catches ``OperatorError`` and turns ``reason``/``message`` into a condition, never by
matching exception text. ``message`` is safe to show users: no secret, no credential.
"""

from __future__ import annotations

from prefect_workpool_operator.core.health import Failure


class OperatorError(Exception):
    """A failure with a stable ``reason`` (a condition reason) and a user-safe ``message``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def as_failure(self) -> Failure:
        return Failure(self.reason, self.message)
