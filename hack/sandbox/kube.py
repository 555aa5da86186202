"""A real Kubernetes control plane (etcd + kube-apiserver) on loopback, without Docker.

By itself there is no controller-manager or scheduler: no garbage collection, namespaces
never finish deleting and Deployments never get Pods. It is enough for CRDs, RBAC checks,
ServiceAccount tokens and custom-resource reconciliation by an operator. With
``address=`` (the node bridge's own address) it serves where pods can reach it, with the
ServiceAccount admission plugin on, for a ``sandbox.node.LocalNode`` to run pods.

    with LocalControlPlane(tmp_path) as cp:
        subprocess.run(["kubectl", "get", "ns"], env=cp.env(), check=True)
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import json
import os
import pathlib
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping
from functools import partial

from .processes import free_port, log_tails, stop_pids, wait_until

BUILD_TOOLS = pathlib.Path(__file__).resolve().parent.parent / "build-tools.sh"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
PID_FILE = "pids.json"
_PR_SET_PDEATHSIG = 1

Log = Callable[[str], None]


def build_tools() -> pathlib.Path:
    """Run hack/build-tools.sh (cached after the first build); its last stdout line is bin dir."""
    # stderr is inherited so the (long, first-time) build progress stays visible.
    out = subprocess.run([str(BUILD_TOOLS)], stdout=subprocess.PIPE, text=True, check=True).stdout
    return pathlib.Path(out.strip().splitlines()[-1])


def write_pid_file(path: pathlib.Path, state: Mapping[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)  # atomic, so `status` never reads half a file


def read_pid_file(path: pathlib.Path) -> dict[str, object] | None:
    try:
        state: dict[str, object] = json.loads(path.read_text())
        return state
    except FileNotFoundError:
        return None


def _die_with_parent(parent: int) -> Callable[[], None]:
    """preexec_fn: the child gets SIGKILL when its parent dies, even if Python is SIGKILLed.

    Linux sends it when the *thread* that forked exits, so start from a long-lived thread.
    """

    def preexec() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class LocalControlPlane:
    def __init__(
        self,
        workdir: pathlib.Path,
        bin_dir: pathlib.Path | None = None,
        log: Log = print,
        *,
        detach: bool = False,
        apiserver_args: tuple[str, ...] = (),
        address: str = "127.0.0.1",
        service_cidr: str = "10.0.0.0/24",
    ) -> None:
        """`detach=True` (for hack/cluster.py) lets the processes outlive this Python process;
        ``apiserver_args``: more kube-apiserver flags (a test's own control plane);
        ``address``: where kube-apiserver listens — loopback, or a node bridge's own address
        (then pods reach it through the ``kubernetes`` Service and get ServiceAccount tokens)."""
        self.workdir = pathlib.Path(workdir).resolve()
        self.bin_dir = bin_dir
        self.log = log
        self.detach = detach
        self.apiserver_args = tuple(apiserver_args)
        self.address = address
        self.service_cidr = service_cidr
        self.for_pods = address != "127.0.0.1"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.server = ""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._token = ""
        self._ca_file = self.workdir / "certs" / "apiserver.crt"  # written by kube-apiserver

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> None:
        if self.bin_dir is None:
            self.bin_dir = build_tools()
        deadline = time.monotonic() + timeout  # after the build: a first build takes minutes
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.detach:
            atexit.register(self.stop)  # backstop if __exit__/stop() is never reached
        try:
            etcd_url = self._start_etcd(deadline)
            self._start_apiserver(etcd_url, deadline)
        except BaseException:
            log_tails(self.workdir, self.procs, self.log)
            self.stop()
            raise

    def stop(self) -> None:
        # The apiserver first, so it does not spin on a vanished etcd while shutting down.
        pids = {n: p.pid for n, p in reversed(self.procs.items()) if p.poll() is None}
        stop_pids(pids, self.log)
        for p in self.procs.values():
            try:
                p.wait(timeout=5)  # reap; SIGKILL has been sent if needed
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()

    def __enter__(self) -> LocalControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    # -- components --------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        assert self.bin_dir is not None
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                [str(self.bin_dir / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                # Own session: a terminal's Ctrl-C does not reach it; stop() signals the group.
                start_new_session=True,
                preexec_fn=None if self.detach else _die_with_parent(os.getpid()),
            )
        self.procs[name] = proc
        return proc

    def _start_etcd(self, deadline: float) -> str:
        client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        proc = self._spawn("etcd", [
            "--name=sandbox",
            f"--data-dir={self.workdir / 'etcd-data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=sandbox={peer}",
            "--unsafe-no-fsync",  # throwaway data; fsync dominates start-up and write latency
            "--log-level=warn",
        ])
        wait_until("etcd", proc, deadline, lambda: _http_ok(f"{client}/health", b'"health":"true"'))
        (self.workdir / "etcd-url").write_text(client)  # beside the kubeconfig: tests compact etcd
        return client

    def _start_apiserver(self, etcd_url: str, deadline: float) -> None:
        sa_key = self._sa_key()
        tokens = self._token_file()
        port = free_port(self.address)
        self.server = f"https://{self.address}:{port}"
        if self.for_pods:
            # Pods reach it as the 'kubernetes' Service (kube-proxy, from these endpoints), and
            # the ServiceAccount admission plugin gives them their token (the 'default'
            # ServiceAccounts come from kube-controller-manager).
            pod_args = ["--endpoint-reconciler-type=lease"]
        else:
            # The endpoint reconciler refuses a loopback address, and nothing in-cluster needs
            # the 'kubernetes' Service endpoints here; nothing would create the 'default'
            # ServiceAccount, so Pods would be rejected by its admission plugin.
            pod_args = ["--endpoint-reconciler-type=none", "--disable-admission-plugins=ServiceAccount"]
        proc = self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}",
            f"--bind-address={self.address}",
            f"--advertise-address={self.address}",
            *pod_args,
            f"--secure-port={port}",
            f"--cert-dir={self._ca_file.parent}",  # self-signed serving cert, kept across restarts
            "--authorization-mode=RBAC",
            f"--token-auth-file={tokens}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={sa_key}",  # a private key file also yields the public key
            f"--service-account-signing-key-file={sa_key}",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--allow-privileged=true",
            *self.apiserver_args,
        ])
        wait_until("kube-apiserver", proc, deadline, partial(self._admin_ok, "/readyz"))
        self._write_kubeconfig()
        # /readyz can pass before the bootstrap controllers have created these.
        for path in ("/api/v1/namespaces/default",
                     "/apis/rbac.authorization.k8s.io/v1/clusterroles/cluster-admin"):
            wait_until(f"kube-apiserver {path}", proc, deadline, partial(self._admin_ok, path))
        self.log(f"kube-apiserver ready at {self.server}; KUBECONFIG={self.kubeconfig}")

    # -- credentials -------------------------------------------------------------------------

    def _sa_key(self) -> pathlib.Path:
        """RSA key that signs ServiceAccount tokens; reused so tokens survive a restart."""
        key = self.workdir / "sa.key"
        if not key.exists():
            # The stdlib cannot generate RSA keys; openssl is on every CI image we use.
            if shutil.which("openssl") is None:
                raise RuntimeError("openssl is needed to generate the ServiceAccount signing key")
            subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"],
                           check=True, capture_output=True)
        return key

    def _token_file(self) -> pathlib.Path:
        """Static bearer token for user 'admin' in system:masters (bypasses RBAC)."""
        path = self.workdir / "tokens.csv"
        if path.exists():
            self._token = path.read_text().split(",", 1)[0]
        else:
            self._token = secrets.token_hex(24)
            path.write_text(f"{self._token},admin,admin,system:masters\n")
            path.chmod(0o600)
        return path

    def _write_kubeconfig(self) -> None:
        # The generated apiserver.crt is the serving cert plus the CA that signed it; embedding
        # it keeps the kubeconfig usable when copied elsewhere (e.g. into an operator's env).
        ca = base64.b64encode(self._ca_file.read_bytes()).decode()
        self.kubeconfig.write_text(f"""\
apiVersion: v1
kind: Config
clusters:
- name: sandbox
  cluster:
    server: {self.server}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    token: {self._token}
contexts:
- name: sandbox
  context:
    cluster: sandbox
    user: admin
    namespace: default
current-context: sandbox
""")
        self.kubeconfig.chmod(0o600)

    # -- helpers -----------------------------------------------------------------------------

    def _admin_ok(self, path: str) -> bool:
        """True if an admin GET of `path` answers 200; False while not reachable yet."""
        if not self._ca_file.exists():  # written early in apiserver start-up
            return False
        req = urllib.request.Request(self.server + path,
                                     headers={"Authorization": f"Bearer {self._token}"})
        ctx = ssl.create_default_context(cafile=str(self._ca_file))
        try:
            with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
                return bool(r.status == 200)
        except OSError:  # includes HTTPError (e.g. 500 while still starting) and SSL errors
            return False


def _http_ok(url: str, expect: bytes) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return expect in r.read()
    except OSError:
        return False
