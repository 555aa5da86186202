"""The operator as the image runs it: uid/gid 65532 with no passwd entry, HOME missing and
the working directory unwritable. It must log in and hold its Lease (kopf's own identity
detection calls getpass.getuser(), which fails for such a uid)."""

from __future__ import annotations

import os
import pathlib
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from sandbox.processes import free_port, stop_process_group
from tests.e2e.test_probes import answers
from tests.support.kubectl import Kubectl, wait_for

pytestmark = pytest.mark.e2e

UID = 65532
# getpass.getuser() reads these before it falls back to the passwd database.
USER_VARIABLES = ("USER", "LOGNAME", "LNAME", "USERNAME", "POD_ID", "HOME")


def _skip(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(f"NOT TESTED: the operator as a uid without a passwd entry — {reason}")


@pytest.fixture
def jail() -> Iterator[pathlib.Path]:
    """A root-owned directory the operator may read but not write (its working directory)."""
    if os.geteuid() != 0:
        _skip("needs root to switch to uid 65532 (setpriv)")
    if shutil.which("setpriv") is None:
        _skip("setpriv (util-linux) is not installed")
    try:
        pwd.getpwuid(UID)
    except KeyError:
        pass
    else:
        _skip(f"uid {UID} has a passwd entry on this machine: the test would prove nothing")
    path = pathlib.Path(tempfile.mkdtemp(prefix="pwo-nopasswd-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_runs_as_a_uid_without_passwd_entry(kubectl: Kubectl, namespace: str, jail: pathlib.Path) -> None:
    setpriv = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups"]

    def imports() -> bool:  # the interpreter, the venv and the source tree must be readable by the uid
        probe = [*setpriv, sys.executable, "-c", "import prefect_workpool_operator.handlers.startup, prefect_workpool_operator.handlers.policy"]
        return subprocess.run(probe, check=False, capture_output=True, cwd="/").returncode == 0

    if not imports():
        # The interpreter lives under root's home (pyenv, say): let the uid read (only read:
        # CAP_DAC_READ_SEARCH grants no write, so HOME and the working directory stay unwritable).
        setpriv += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        if not imports():
            _skip(f"uid {UID} cannot read the interpreter or the source ({sys.executable})")
    kubeconfig = jail / "kubeconfig"
    shutil.copyfile(kubectl.kubeconfig, kubeconfig)
    os.chown(kubeconfig, UID, UID)
    kubeconfig.chmod(0o600)
    workdir = jail / "cwd"
    workdir.mkdir(mode=0o555)
    workdir.chmod(0o555)  # mkdir's mode is masked by the umask
    log = jail / "operator.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in USER_VARIABLES}
    env.update({
        "HOME": "/nonexistent/home", "KUBECONFIG": str(kubeconfig), "PWO_NAMESPACES": namespace,
        "PWO_LEASE_NAMESPACE": namespace, "POD_NAME": "nopasswd", "PWO_METRICS_PORT": str(free_port()),
        "PWO_LIVENESS_ENDPOINT": f"http://127.0.0.1:{port}/healthz", "PWO_VERBOSE": "1",
    })
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*setpriv, sys.executable, "-m", "prefect_workpool_operator"],
            env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        ns = kubectl.in_namespace(namespace)

        def holder() -> str | None:
            assert proc.poll() is None, f"the operator exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
            leases = ns.get_json("lease")["items"]
            return next((lease["spec"].get("holderIdentity") for lease in leases
                         if lease["metadata"]["name"] == "prefect-workpool-operator"), None)

        assert wait_for(holder, timeout=60, what="the Lease held") == "nopasswd"
        status, body = wait_for(lambda: (r := answers(f"http://127.0.0.1:{port}/readyz")) and r[0] == 200 and r,
                                timeout=30, what="/readyz 200")
        assert body["role"] == "leader", body
        text = log.read_text(errors="replace")
        assert "getpwuid" not in text and "Traceback" not in text, text[-4000:]
        # Still the holder a few renewals later (the election thread keeps renewing).
        assert wait_for(lambda: holder() == "nopasswd" and ns.get_json("lease", "prefect-workpool-operator")[
            "spec"]["renewTime"], what="renewed")
    finally:
        stop_process_group(proc, grace=15.0)
    assert ns.get_json("lease", "prefect-workpool-operator")["spec"].get("holderIdentity") in ("", None), \
        "released on SIGTERM"
