"""An ECS world in moto for tests and the demo: clusters, services, tagged FARGATE tasks."""

from __future__ import annotations

import uuid
from typing import Any

import boto3

from prefect_workpool_operator.core import infrastructure
from sandbox.moto_server import MotoServer

REGION = "us-east-1"


class EcsSandbox:
    """Sets up what the operator only reads: clusters, services, tagged FARGATE tasks."""

    def __init__(self, moto: MotoServer) -> None:
        kwargs: dict[str, Any] = {
            "endpoint_url": moto.endpoint_url, "region_name": REGION,
            "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
        }
        self.ecs = boto3.client("ecs", **kwargs)
        self.autoscaling = boto3.client("application-autoscaling", **kwargs)
        self.cloudwatch = boto3.client("cloudwatch", **kwargs)
        ec2 = boto3.client("ec2", **kwargs)
        self.vpc = vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        self.subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        self.task_definition = self.ecs.register_task_definition(
            family="prefect-flow",
            requiresCompatibilities=["FARGATE"],
            networkMode="awsvpc",
            cpu="256",
            memory="512",
            containerDefinitions=[{"name": "prefect", "image": "prefecthq/prefect:3-latest", "essential": True,
                                  "memory": 512}],
        )["taskDefinition"]["taskDefinitionArn"]

    def cluster(self) -> str:
        name = f"prefect-{uuid.uuid4().hex[:8]}"
        self.ecs.create_cluster(clusterName=name)
        return name

    def cluster_arn(self, name: str) -> str:
        return str(self.ecs.describe_clusters(clusters=[name])["clusters"][0]["clusterArn"])

    def service(self, cluster: str, name: str = "prefect-worker") -> str:
        # desiredCount 0 at creation: moto's deployment is then COMPLETED, not IN_PROGRESS forever.
        self.ecs.create_service(cluster=cluster, serviceName=name, taskDefinition=self.task_definition,
                                desiredCount=0, launchType="FARGATE")
        return name

    def run(self, cluster: str, count: int = 1, run_id: str | None = None) -> list[str]:
        """Start tasks the way prefect-aws does: FARGATE, tagged with the flow run."""
        tags = [{"key": infrastructure.RUN_ID_TAG, "value": run_id}, {"key": "prefect.io/worker-name", "value": "w1"}]
        arns: list[str] = []
        while len(arns) < count:
            answer = self.ecs.run_task(
                cluster=cluster, taskDefinition=self.task_definition, launchType="FARGATE",
                count=min(count - len(arns), 100),
                networkConfiguration={"awsvpcConfiguration": {"subnets": [self.subnet], "securityGroups": [],
                                                              "assignPublicIp": "DISABLED"}},
                **({"tags": tags} if run_id else {}),
            )
            arns += [t["taskArn"] for t in answer["tasks"]]
        return arns

    def stop(self, cluster: str, task_arn: str) -> None:
        self.ecs.stop_task(cluster=cluster, task=task_arn, reason="test")
