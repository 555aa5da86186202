"""Application Auto Scaling and CloudWatch alarms for TargetTracking / StepScaling (work in progress)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AutoscalingMemory:
    pass
