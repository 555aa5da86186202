"""`make demo`: the operator's main job on a local sandbox of real components.

Starts a Kubernetes control plane (etcd + kube-apiserver), moto (ECS) with a
cluster and worker service, a Prefect server with basic auth, seeds an `ecs` work
pool with stuck and Late runs, helm-installs the chart (CRD, ServiceAccount, RBAC),
applies examples/03-ecs-scaling (Secret + policy), runs the operator with the
chart's environment and ServiceAccount token, and shows desiredCount following the backlog,
stuck runs recovered, and what `kubectl get` / `kubectl describe` say. Ctrl-C, or DEMO_SECONDS=n, stops
everything it started.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import yaml

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from sandbox.kube import LocalControlPlane, build_tools  # noqa: E402
from sandbox.processes import free_port  # noqa: E402
from sandbox.prefect_seed import PrefectSeeder, late_state  # noqa: E402
from sandbox.moto_server import MotoServer  # noqa: E402
from sandbox.prefect_server import PrefectServer  # noqa: E402
from sandbox.processes import operator_process as run_operator  # noqa: E402
from tests.support.ecs_sandbox import EcsSandbox  # noqa: E402
from tests.support.kubectl import Kubectl, condition, service_account_kubeconfig, wait_for  # noqa: E402

NAMESPACE = "prefect-demo"
SYSTEM_NS = "pwo-system"
RELEASE = "prefect-workpool-operator"
POOL = "ecs-pool"
AUTH = "admin:demo-password"


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def example_manifests(api_url: str, moto_url: str, cluster: str, service: str) -> str:
    docs = list(yaml.safe_load_all((REPO / "examples" / "03-ecs-scaling" / "policy.yaml").read_text()))
    for doc in docs:
        if doc["kind"] == "Secret":
            doc["stringData"]["auth-string"] = AUTH
            continue
        spec = doc["spec"]
        spec["prefect"]["apiUrl"] = api_url
        spec["ecs"].update(cluster=cluster, service=service, endpointUrl=moto_url)
        # The demo can't wait minutes: short thresholds.
        spec["interval"] = "10s"
        spec["staleRuns"]["pendingTimeout"] = "30s"
        spec["scaling"].update(backlogPerWorker=2, maxWorkers=5, scaleDownStabilization="30s", scaleDownCooldown="0s")
    return yaml.safe_dump_all(docs)


def main() -> int:
    seconds = float(os.environ.get("DEMO_SECONDS", "0")) or None
    # Ctrl-C and SIGTERM both stop everything (a shell may start us with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = pathlib.Path(tempfile.mkdtemp(prefix="pwo-demo-"))
    print(f"demo state and logs: {work}")
    stack = contextlib.ExitStack()
    plane = LocalControlPlane(work / "kube")
    prefect = PrefectServer(work / "prefect", auth_string=AUTH)
    moto = MotoServer(work / "moto")
    try:
        banner("starting the local control plane (etcd + kube-apiserver)")
        plane.start()
        banner("starting moto (AWS ECS/CloudWatch) with a cluster and the worker service")
        moto.start()
        os.environ.update(AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo")  # moto takes any
        ecs = EcsSandbox(moto)
        cluster = ecs.cluster()
        service = ecs.service(cluster)
        live_task = ecs.run(cluster, run_id="placeholder")[0]
        print(f"ECS cluster {cluster}, service {service} (desiredCount 0), endpoint {moto.endpoint_url}")
        banner("starting a Prefect server (SQLite, basic auth)")
        prefect.start()
        print(f"Prefect API: {prefect.api_url}")

        banner(f"seeding work pool {POOL!r}: 3 runs stuck in PENDING (their worker died), 1 PENDING run whose "
               "ECS task is starting, 4 Late runs, one live worker")
        seeder = PrefectSeeder(prefect.api_url, auth=prefect.auth)
        seeder.create_ecs_pool(POOL)
        deployment = seeder.create_deployment(POOL)
        stuck = seeder.create_runs(deployment, 3, {"type": "PENDING"})
        starting = seeder.create_runs(deployment, 1, {"type": "PENDING"})[0]
        seeder._request("PATCH", f"/flow_runs/{starting}", json={"infrastructure_pid": f"{cluster}::{live_task}"})
        seeder.create_runs(deployment, 4, late_state(120))
        seeder.heartbeat_worker(POOL, "ecs-worker-1")

        kubectl = Kubectl(plane.kubeconfig)
        banner(f"helm install {RELEASE} charts/prefect-workpool-operator -n {SYSTEM_NS} (CRD, ServiceAccount, RBAC, Deployment)")
        helm = [str(build_tools() / "helm"), "--kubeconfig", str(plane.kubeconfig)]
        subprocess.run([*helm, "install", RELEASE, str(REPO / "charts" / "prefect-workpool-operator"), "-n", SYSTEM_NS,
                        "--create-namespace"], check=True)
        kubectl("wait", "--for=condition=Established", "crd/prefectworkpoolpolicies.prefectops.dev")
        print(kubectl("get", "serviceaccount,clusterrole,clusterrolebinding,deployment", "-A",
                      "-l", f"app.kubernetes.io/instance={RELEASE}"), end="")
        kubectl("create", "namespace", NAMESPACE)
        ns = kubectl.in_namespace(NAMESPACE)
        banner("applying examples/03-ecs-scaling (Secret + policy)")
        print(ns.apply(example_manifests(prefect.api_url, moto.endpoint_url, cluster, service)), end="")

        # No kubelet here runs the chart's Deployment: run its container's command with its
        # environment and a token of its ServiceAccount, which is what the Pod would have.
        banner("running the operator as the chart's Pod would: its env, its ServiceAccount token")
        sa_config = work / "operator-kubeconfig"
        service_account_kubeconfig(kubectl, SYSTEM_NS, RELEASE, sa_config)
        pod_spec = kubectl.in_namespace(SYSTEM_NS).get_json("deployment", RELEASE)["spec"]["template"]["spec"]
        (container,) = pod_spec["containers"]
        # The downward API's fields, as the kubelet would fill them in (the Lease lives in the pod's namespace).
        pod_fields = {"metadata.name": f"{RELEASE}-demo", "metadata.namespace": SYSTEM_NS}
        chart_env = {e["name"]: e.get("value", "") for e in container.get("env", []) if "valueFrom" not in e}
        chart_env |= {e["name"]: pod_fields[e["valueFrom"]["fieldRef"]["fieldPath"]] for e in container.get("env", [])
                      if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") in pod_fields}
        env = {**os.environ, **chart_env, "KUBECONFIG": str(sa_config), "PWO_TICK_SECONDS": "1",
               "PWO_METRICS_PORT": str(free_port()), "PWO_LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz"}
        stack.enter_context(run_operator(env, work / "operator.log"))
        print(f"operator log: {work / 'operator.log'}; metrics on {env['PWO_METRICS_PORT']}")

        def is_ready():
            return condition(ns.get_json("pwpp", "etl-ecs"), "Ready")
        wait_for(is_ready, timeout=60, what="the first reconcile")
        banner(f"kubectl get pwpp -n {NAMESPACE}")
        print(ns("get", "pwpp", "-o", "wide"), end="")
        banner(f"kubectl describe pwpp etl-ecs -n {NAMESPACE}")
        print(ns("describe", "pwpp", "etl-ecs"), end="")

        banner("live: desiredCount follows the backlog; stuck runs are requeued after 30 s; Ctrl-C stops")
        started = time.monotonic()
        shown = surge = drained = False
        while seconds is None or time.monotonic() - started < seconds:
            left = None if seconds is None else seconds - (time.monotonic() - started)
            time.sleep(5.0 if left is None else min(5.0, max(0.1, left)))
            elapsed = time.monotonic() - started
            seeder.heartbeat_worker(POOL, "ecs-worker-1")
            if not surge and elapsed > 20:
                surge = True
                print("-- 6 more runs become due: the backlog grows", flush=True)
                seeder.create_runs(deployment, 6, late_state(60))
            if not drained and elapsed > 60:
                drained = True
                print("-- the workers start every due run: the backlog clears (scale-down waits 30 s)", flush=True)
                for run in seeder.filter_runs({"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}, "limit": 200}):
                    seeder.set_state(run["id"], {"type": "RUNNING"})
            svc = ecs.ecs.describe_services(cluster=cluster, services=[service])["services"][0]
            row = ns("get", "pwpp").splitlines()[-1]
            print(f"{row}   | ECS desiredCount={svc['desiredCount']}", flush=True)
            if not shown and all(seeder.read_run(r)["state"]["name"] == "Requeued" for r in stuck):
                shown = True
                banner("the stuck runs are back in SCHEDULED ('Requeued'); the one with a live task was left alone")
                print(ns("describe", "pwpp", "etl-ecs"), end="")
        banner("final state")
        print(ns("describe", "pwpp", "etl-ecs"), end="")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything")
        return 0
    finally:
        stack.close()  # the operator first, then what it talks to
        prefect.stop()
        moto.stop()
        plane.stop()
        print(f"stopped; logs kept in {work}")


if __name__ == "__main__":
    sys.exit(main())
