"""`make demo`: the operator's main job on a local sandbox of real components.

Starts a Kubernetes control plane (etcd + kube-apiserver), a Prefect server with
basic auth, seeds an `ecs` work pool with runs, installs the CRD, applies the
self-hosted example (Secret + policy), runs the operator, and shows what
`kubectl get` / `kubectl describe` say. Ctrl-C, or DEMO_SECONDS=n, stops
everything it started.
"""

from __future__ import annotations

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

from sandbox.kube import LocalControlPlane, free_port  # noqa: E402
from sandbox.prefect_seed import PrefectSeeder, late_state  # noqa: E402
from sandbox.prefect_server import PrefectServer  # noqa: E402
from tests.kubectl import Kubectl, condition, wait_for  # noqa: E402

NAMESPACE = "prefect-demo"
POOL = "ecs-pool"
AUTH = "admin:demo-password"


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def example_manifests(api_url: str) -> str:
    docs = list(yaml.safe_load_all((REPO / "examples" / "01-self-hosted" / "policy.yaml").read_text()))
    for doc in docs:
        if doc["kind"] == "Secret":
            doc["stringData"]["auth-string"] = AUTH
        else:
            doc["spec"]["prefect"]["apiUrl"] = api_url
            doc["spec"]["interval"] = "10s"
            doc["spec"]["staleRuns"]["pendingTimeout"] = "30s"  # the demo can't wait 10 minutes
    return yaml.safe_dump_all(docs)


def main() -> int:
    seconds = float(os.environ.get("DEMO_SECONDS", "0")) or None
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    work = pathlib.Path(tempfile.mkdtemp(prefix="pwo-demo-"))
    print(f"demo state and logs: {work}")
    operator: subprocess.Popen[bytes] | None = None
    plane = LocalControlPlane(work / "kube")
    prefect = PrefectServer(work / "prefect", auth_string=AUTH)
    try:
        banner("starting the local control plane (etcd + kube-apiserver)")
        plane.start()
        banner("starting a Prefect server (SQLite, basic auth)")
        prefect.start()
        print(f"Prefect API: {prefect.api_url}")

        banner(f"seeding work pool {POOL!r}: 3 runs stuck in PENDING (their worker died), 4 Late runs, one live worker")
        seeder = PrefectSeeder(prefect.api_url, auth=prefect.auth)
        seeder.create_ecs_pool(POOL)
        deployment = seeder.create_deployment(POOL)
        stuck = seeder.create_runs(deployment, 3, {"type": "PENDING"})
        seeder.create_runs(deployment, 4, late_state(120))
        seeder.heartbeat_worker(POOL, "ecs-worker-1")

        kubectl = Kubectl(plane.kubeconfig)
        banner("installing the CRD and applying examples/01-self-hosted (Secret + policy)")
        print(kubectl("apply", "--server-side", "-f", str(REPO / "crds")), end="")
        kubectl("wait", "--for=condition=Established", "crd/prefectworkpoolpolicies.prefectops.dev")
        kubectl("create", "namespace", NAMESPACE)
        ns = kubectl.in_namespace(NAMESPACE)
        print(ns.apply(example_manifests(prefect.api_url)), end="")

        banner("running the operator: python -m prefect_workpool_operator")
        log = (work / "operator.log").open("wb")
        env = {**plane.env(), "PWO_TICK_SECONDS": "1", "PWO_METRICS_PORT": str(free_port())}
        operator = subprocess.Popen([sys.executable, "-m", "prefect_workpool_operator"], env=env, stdout=log, stderr=log)
        print(f"operator log: {work / 'operator.log'}")

        def is_ready():
            return condition(ns.get_json("pwpp", "etl"), "Ready")
        wait_for(is_ready, timeout=60, what="the first reconcile")
        banner(f"kubectl get pwpp -n {NAMESPACE}")
        print(ns("get", "pwpp", "-o", "wide"), end="")
        banner(f"kubectl describe pwpp etl -n {NAMESPACE}")
        print(ns("describe", "pwpp", "etl"), end="")

        banner("live: the stuck runs are requeued once PENDING for 30 s; Ctrl-C stops everything")
        started = time.monotonic()
        shown = False
        while seconds is None or time.monotonic() - started < seconds:
            time.sleep(min(10.0, max(0.1, (seconds or 10) - (time.monotonic() - started))))
            seeder.heartbeat_worker(POOL, "ecs-worker-1")
            print(ns("get", "pwpp").splitlines()[-1], flush=True)
            if not shown and all(seeder.read_run(r)["state"]["name"] == "Requeued" for r in stuck):
                shown = True
                banner("the stuck runs are back in SCHEDULED (state 'Requeued'); kubectl describe says so:")
                print(ns("describe", "pwpp", "etl"), end="")
        banner("final state")
        print(ns("describe", "pwpp", "etl"), end="")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything")
        return 0
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                operator.kill()
        prefect.stop()
        plane.stop()
        print(f"stopped; logs kept in {work}")


if __name__ == "__main__":
    sys.exit(main())
