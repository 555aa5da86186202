"""Releases: one version everywhere, a changelog section for it, and `make release`'s artefacts."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import tarfile
import tomllib

import yaml

import prefect_workpool_operator

REPO = pathlib.Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "prefect-workpool-operator"
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$")


def versions() -> dict[str, str]:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return {
        "pyproject": tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"],
        "module": prefect_workpool_operator.__version__,
        "appVersion": str(chart["appVersion"]),
        "chart": str(chart["version"]),
    }


def test_one_semantic_version_and_its_changelog_and_upgrade_notes() -> None:
    v = versions()
    assert all(SEMVER.match(x) for x in v.values()), v
    assert v["pyproject"] == v["module"] == v["appVersion"], v
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(v['pyproject'])}\] - (\d{{4}}-\d{{2}}-\d{{2}}|unreleased)$", changelog, re.M)
    # A version whose changes need action links to its section of UPGRADING.md, which exists.
    upgrading = (REPO / "UPGRADING.md").read_text()
    anchors = {h.replace(".", "") for h in re.findall(r"^## (\S+)$", upgrading, re.M)}  # GitHub drops the dots
    linked = re.findall(r"UPGRADING\.md#([\w-]+)\)", changelog)
    assert linked and set(linked) <= anchors, (linked, anchors)
    assert "## 0.2.0" in upgrading and upgrading.index("`spec.scaling.mode: Off` is now `Disabled`") < upgrading.index("Durations")
    assert "v1alpha1" in changelog and "CRD versions" in (REPO / "docs" / "design.md").read_text()


def test_make_release_packages_chart_wheel_and_checksums(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "release"
    env = {**os.environ, "DRAFT": "1", "RELEASE_DIR": str(out), "PYTHON": str(REPO / ".venv" / "bin" / "python")}
    proc = subprocess.run([str(REPO / "hack" / "release.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    version = versions()["pyproject"]
    chart = out / f"prefect-workpool-operator-{versions()['chart']}.tgz"
    wheel = out / f"prefect_workpool_operator-{version}-py3-none-any.whl"
    assert chart.exists() and wheel.exists()
    # The image: built where a builder works, and said so where none does.
    assert re.search(r">> image: (NOT built — no working image builder|prefect-workpool-operator:)", proc.stdout), proc.stdout
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == len(list(out.iterdir())) - 1, check.stdout
    with tarfile.open(chart) as tgz:
        names = set(tgz.getnames())
    assert "prefect-workpool-operator/dashboards/prefect-workpool-operator.json" in names
    assert not any("/ci/" in n or n.endswith(".gotmpl") for n in names)  # test inputs stay out of the package


def test_release_refuses_an_undated_changelog_section(tmp_path: pathlib.Path) -> None:
    changelog = (REPO / "CHANGELOG.md").read_text()
    if not re.search(rf"^## \[{re.escape(versions()['pyproject'])}\] - unreleased$", changelog, re.M):
        return  # a dated release: nothing to refuse
    env = {**os.environ, "RELEASE_DIR": str(tmp_path / "r")}
    env.pop("DRAFT", None)
    proc = subprocess.run([str(REPO / "hack" / "release.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no release date" in proc.stderr
    assert not (tmp_path / "r").exists()
