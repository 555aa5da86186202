"""Kubernetes operator that keeps Prefect work pools on AWS ECS healthy."""

__version__ = "0.2.0"

GROUP = "prefectops.dev"
VERSION = "v1alpha1"
PLURAL = "prefectworkpoolpolicies"
KIND = "PrefectWorkPoolPolicy"
# Events' source.component / reportingComponent (kubectl describe's "From" column).
EVENT_SOURCE = "prefect-workpool-operator"
