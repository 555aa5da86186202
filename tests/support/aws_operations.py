"""Every AWS operation the operator makes during the tests, recorded by a botocore event hook.

tests/conftest.py installs the hook for the whole session. Only the operator's own clients
are recorded (their user agent carries ``prefect-workpool-operator``), not the boto3 clients
tests use to set moto up. Each call is kept with its parameters, so the IAM policies in
deploy/iam/ can be evaluated against the exact request (tests/integration/cycle/test_iam_policies.py).
"""

from __future__ import annotations

import fnmatch
import json
import pathlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import botocore.session

OPERATOR_AGENT = "prefect-workpool-operator"
POLICIES = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "iam"
# Placeholders in deploy/iam/*.json and what moto answers with.
MOTO_ACCOUNT = "123456789012"


@dataclass(frozen=True)
class Call:
    action: str  # the IAM action, e.g. ecs:DescribeTasks
    params: str  # the API parameters, as JSON (hashable)

    @property
    def args(self) -> dict[str, Any]:
        return json.loads(self.params)


class OperationLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[Call] = []
        self._installed = False

    def install(self) -> None:
        """Hook every botocore client created from now on (the operator's one boto3 Session included)."""
        if self._installed:
            return
        self._installed = True
        original = botocore.session.Session.create_client
        log = self

        def create_client(session: botocore.session.Session, service_name: str, *args: Any, **kwargs: Any) -> Any:
            client = original(session, service_name, *args, **kwargs)
            config = kwargs.get("config")
            if OPERATOR_AGENT in str(getattr(config, "user_agent_extra", "") or ""):
                client.meta.events.register("provide-client-params", log._record(service_name))
            return client

        botocore.session.Session.create_client = create_client  # type: ignore[method-assign]

    def _record(self, service: str):
        def record(params: dict[str, Any], model: Any, **_: Any) -> None:
            call = Call(f"{service}:{model.name}", json.dumps(params, sort_keys=True, default=str))
            with self._lock:
                self.calls.append(call)
        return record

    def actions(self) -> set[str]:
        with self._lock:
            return {c.action for c in self.calls}

    @contextmanager
    def capture(self) -> Iterator[list[Call]]:
        """The calls made inside the block."""
        with self._lock:
            start = len(self.calls)
        captured: list[Call] = []
        try:
            yield captured
        finally:
            with self._lock:
                captured.extend(self.calls[start:])


LOG = OperationLog()


def policy(name: str) -> dict[str, Any]:
    return json.loads((POLICIES / f"{name}.json").read_text())


def granted_actions(doc: dict[str, Any]) -> set[str]:
    return {a for s in doc["Statement"] for a in _list(s["Action"])}


def all_granted() -> set[str]:
    return set().union(*(granted_actions(json.loads(p.read_text())) for p in POLICIES.glob("*.json")))


def _list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def allows(doc: dict[str, Any], call: Call, region: str, cluster: str, service: str | None,
           metric_namespace: str = "Prefect", k8s_namespace: str = "ns", policy_name: str = "ecs") -> bool:
    """Whether the policy (placeholders filled in) allows this exact request: the request's
    resource ARN matches a statement's Resource and its condition keys its Condition.

    A small evaluator for the three forms the policies use (ARN patterns, ArnEquals,
    StringEquals), enough to catch a wrong ARN shape or a missing action.
    """
    fill = {"REGION": region, "ACCOUNT_ID": MOTO_ACCOUNT, "CLUSTER": cluster, "SERVICE": service or "",
            "METRIC_NAMESPACE": metric_namespace, "K8S_NAMESPACE": k8s_namespace, "POLICY_NAME": policy_name}
    resources, context = _request(call, region)
    for statement in doc["Statement"]:
        if statement["Effect"] != "Allow" or call.action not in _list(statement["Action"]):
            continue
        patterns = [_fill(r, fill) for r in _list(statement["Resource"])]
        if not all(any(fnmatch.fnmatchcase(arn, p) for p in patterns) for arn in resources):
            continue
        conditions = statement.get("Condition", {})
        if all(context.get(key) == _fill(value, fill)
               for operator in conditions.values() for key, value in operator.items()):
            return True
    return False


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def _request(call: Call, region: str) -> tuple[list[str], dict[str, str]]:
    """The resource ARNs a request acts on and its condition keys, as IAM sees them."""
    args = call.args
    prefix = f"arn:aws:ecs:{region}:{MOTO_ACCOUNT}"

    def cluster_arn() -> str:
        name = str(args.get("cluster", "default"))
        return name if name.startswith("arn:") else f"{prefix}:cluster/{name}"

    def short(name: str) -> str:
        return name.rsplit("/", 1)[-1]

    action = call.action
    if action in ("ecs:DescribeServices", "ecs:UpdateService"):
        names = args.get("services") or [args["service"]]
        cluster = short(cluster_arn())
        return [n if n.startswith("arn:") else f"{prefix}:service/{cluster}/{n}" for n in names], \
            {"ecs:cluster": cluster_arn()}
    if action == "ecs:DescribeTasks":
        cluster = short(cluster_arn())
        return [t if t.startswith("arn:") else f"{prefix}:task/{cluster}/{t}" for t in args["tasks"]], \
            {"ecs:cluster": cluster_arn()}
    if action == "ecs:ListTasks":
        return ["*"], {"ecs:cluster": cluster_arn()}
    if action == "cloudwatch:PutMetricData":
        return ["*"], {"cloudwatch:namespace": str(args["Namespace"])}
    if action in ("cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms", "cloudwatch:TagResource"):
        names = args.get("AlarmNames") or [args["AlarmName"]]
        return [f"arn:aws:cloudwatch:{region}:{MOTO_ACCOUNT}:alarm:{n}" for n in names], {}
    if action in AUTOSCALING_WRITES:
        # A scalable target's ARN ends in an id AWS makes up; its namespace and dimension are condition keys.
        return [f"arn:aws:application-autoscaling:{region}:{MOTO_ACCOUNT}:scalable-target/0123456789abcdef"], {
            "application-autoscaling:service-namespace": str(args.get("ServiceNamespace")),
            "application-autoscaling:scalable-dimension": str(args.get("ScalableDimension"))}
    if action == "iam:CreateServiceLinkedRole":
        return [f"arn:aws:iam::{MOTO_ACCOUNT}:role/aws-service-role/{args['AWSServiceName']}/"
                "AWSServiceRoleForApplicationAutoScaling_ECSService"], {"iam:AWSServiceName": args["AWSServiceName"]}
    return ["*"], {}


AUTOSCALING_WRITES = tuple(f"application-autoscaling:{op}" for op in (
    "RegisterScalableTarget", "DeregisterScalableTarget", "PutScalingPolicy", "DeleteScalingPolicy", "TagResource"))
ECS_AUTOSCALING_ROLE = "ecs.application-autoscaling.amazonaws.com"


def implied_calls(calls: list[Call]) -> list[Call]:
    """The requests AWS authorizes in the caller's name as part of the operator's own (no API
    call of the operator's shows them, so no hook records them):

    - tags on creation need ``TagResource`` too (RegisterScalableTarget / PutMetricAlarm with Tags);
    - the first RegisterScalableTarget in an account creates the ECS service-linked role;
    - a target tracking policy's alarms are created (PutScalingPolicy) and deleted
      (DeleteScalingPolicy) by Application Auto Scaling with the caller's permissions.
    """
    implied = []
    for call in calls:
        args = call.args
        if call.action == "application-autoscaling:RegisterScalableTarget":
            implied.append(Call("iam:CreateServiceLinkedRole", json.dumps({"AWSServiceName": ECS_AUTOSCALING_ROLE})))
        if call.action in ("application-autoscaling:RegisterScalableTarget", "cloudwatch:PutMetricAlarm") \
                and args.get("Tags"):
            implied.append(Call(call.action.split(":")[0] + ":TagResource", call.params))
        if args.get("PolicyType") == "TargetTrackingScaling" or call.action == \
                "application-autoscaling:DeleteScalingPolicy" and args["PolicyName"].endswith("-target"):
            alarm = f"TargetTracking-{args['ResourceId']}-AlarmHigh-0123"
            verb = "PutMetricAlarm" if call.action.endswith("PutScalingPolicy") else "DeleteAlarms"
            implied.append(Call(f"cloudwatch:{verb}", json.dumps({"AlarmNames": [alarm]})))
    return implied
