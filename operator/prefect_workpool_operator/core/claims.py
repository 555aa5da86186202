"""Who may act when two policies manage the same pool or the same ECS service.

Each policy claims its work pool (API URL + pool name) and, when it scales, its ECS
service (region + cluster + service). Of the policies claiming the same thing, the
oldest acts (creationTimestamp, then namespace/name: a total order every replica
computes alike); every other one touches nothing and reports Conflict. When the
winner goes away (deleted or suspended), the next oldest wins on its next cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

CONFLICT = "Conflict"


@dataclass(frozen=True, order=True)
class Claimant:
    created: str  # RFC 3339 with Z: sorts as time
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Rival:
    claim: str
    winner: Claimant


def claim_keys(spec: Mapping[str, Any]) -> list[str]:
    """What a policy's spec (as stored, possibly invalid) claims; suspended policies claim nothing."""
    if not isinstance(spec, Mapping) or spec.get("suspend") is True:
        return []
    keys = []
    prefect = spec.get("prefect") or {}
    if isinstance(prefect, Mapping) and prefect.get("apiUrl") and prefect.get("workPool"):
        keys.append(f"work pool {prefect['workPool']!r} at {_normal_url(str(prefect['apiUrl']))}")
    ecs, scaling = spec.get("ecs") or {}, spec.get("scaling")
    if isinstance(ecs, Mapping) and isinstance(scaling, Mapping) and ecs.get("service"):
        keys.append(f"ECS service {ecs.get('region')}/{ecs.get('cluster')}/{ecs.get('service')}")
    return keys


def rival_for(me: Claimant, claims: Mapping[str, Iterable[Claimant]]) -> Rival | None:
    """The first claim ``me`` loses, with its winner; None when ``me`` may act."""
    for claim, claimants in sorted(claims.items()):
        winner = min([*claimants, me])
        if winner != me:
            return Rival(claim, winner)
    return None


def conflict_message(rival: Rival) -> str:
    return (f"Policy {rival.winner} (older) already manages the {rival.claim}; this policy touches nothing "
            "while it exists. Delete or change one of the two.")


def _normal_url(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return url.strip().rstrip("/")
    return f"{parts.scheme.lower()}://{host}{port}{parts.path.rstrip('/')}"
