"""The operator image: dependencies on a layer of their own, and `hack/image.sh` building it
without a registry (where a Docker engine runs or can be started)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import tarfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]


def stages() -> dict[str, list[str]]:
    """Each stage's instructions, continuation lines joined, keyed by its `AS` name (the final one: "")."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            m = re.match(r"FROM \S+(?: AS (\S+))?$", line)
            assert m, line
            current = m.group(1) or ""
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    s = stages()
    deps = " ".join(s["deps"])
    # The dependency stage never sees the package's code or its full metadata.
    assert "operator/" not in deps and "pyproject.toml" not in deps
    assert re.search(r"pip install --constraint constraints.txt --requirement requirements.txt", deps)
    assert [line for line in s["requirements"] if line.startswith("COPY")] == ["COPY pyproject.toml ./"]
    build = s["build"]
    copy_code = build.index("COPY operator/ operator/")
    install = next(i for i, line in enumerate(build) if "pip install" in line)
    assert copy_code < install and "--no-deps" in build[install]
    final = s[""]
    assert final.index("COPY --from=deps /opt/venv /opt/venv") < final.index("COPY --from=build /opt/app /opt/app")
    assert "USER 65532:65532" in final
    assert any(line.startswith("ENV ") and "HOME=/tmp" in line for line in final)
    assert final[-1] == 'ENTRYPOINT ["python", "-m", "prefect_workpool_operator"]'


def test_the_requirement_list_is_pyprojects_runtime_dependencies() -> None:
    import tomllib

    command = re.search(r'RUN python -c "(.*)" > requirements.txt', " ".join(stages()["requirements"]))
    assert command
    out = subprocess.run(["python3", "-c", command.group(1)], cwd=REPO, capture_output=True, text=True, check=True)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert out.stdout.split("\n")[:-1] == deps


def can_build() -> bool:
    return subprocess.run([str(REPO / "hack" / "image.sh"), "probe"], capture_output=True).returncode == 0


def diff_ids(archive: pathlib.Path) -> list[str]:
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(tar.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
    assert config["config"]["User"] == "65532:65532"
    assert config["config"]["Entrypoint"] == ["python", "-m", "prefect_workpool_operator"]
    return config["rootfs"]["diff_ids"]


@pytest.mark.skipif(not can_build(), reason="no Docker engine answers and none can be started here")
def test_a_code_change_rebuilds_only_the_code_layer(tmp_path: pathlib.Path) -> None:
    # A copy of the build context, so the edit below stays out of the work tree.
    ctx = tmp_path / "ctx"
    (ctx / "hack").mkdir(parents=True)
    for name in ("Dockerfile", ".dockerignore", "constraints.txt", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, ctx / name)
    for name in ("image.sh", "node-deps.sh"):
        shutil.copy2(REPO / "hack" / name, ctx / "hack" / name)
    shutil.copytree(REPO / "operator", ctx / "operator", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {"IMAGE_REPO": "prefect-workpool-operator-test", "IMAGE_TAG": "layers"}

    def build(archive: pathlib.Path) -> float:
        start = time.monotonic()
        proc = subprocess.run(
            [str(ctx / "hack" / "image.sh"), "save", str(archive)],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=1200,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert proc.stdout.splitlines()[-1] == "prefect-workpool-operator-test:layers"
        return time.monotonic() - start

    build(tmp_path / "before.tar")
    init = ctx / "operator" / "prefect_workpool_operator" / "__init__.py"
    init.write_text(init.read_text() + "\n# a code-only change\n")
    seconds = build(tmp_path / "after.tar")
    before, after = diff_ids(tmp_path / "before.tar"), diff_ids(tmp_path / "after.tar")
    # The base's layers, the dependencies' venv, the package: only the last one differs.
    assert len(before) == len(after) >= 3
    assert before[:-1] == after[:-1] and before[-1] != after[-1]
    print(f"code-only rebuild and save: {seconds:.0f}s")
