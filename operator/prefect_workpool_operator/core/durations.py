"""Go-style durations ("30s", "1m30s", "2h"), the format Kubernetes users already know.

The same grammar is accepted by CEL's ``duration()``, so the API server and the
operator agree on what a valid duration is.
"""

from __future__ import annotations

import re
from datetime import timedelta

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
# At most 5 digits per number and 32 characters: never beyond Go's ~292 years, where
# CEL's duration() fails with an opaque evaluation error (and timedelta overflows).
DURATION_MAX_DIGITS = 5
DURATION_SAFE_PATTERN = r"^([0-9]{1,5}(ms|s|m|h))+$"
_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> timedelta:
    """Parse a Go duration; raise ValueError with the offending text otherwise."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 10m, 1h30m")
    if not re.fullmatch(DURATION_SAFE_PATTERN, text):
        raise ValueError(f"duration {text!r} is too large: at most {DURATION_MAX_DIGITS} digits per number")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """Render a timedelta the way users write it (whole seconds)."""
    total = int(delta.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{seconds}s" if seconds else ""]
    return "".join(parts) or "0s"
