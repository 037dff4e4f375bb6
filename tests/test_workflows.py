"""GitHub's workflow runs what .ci/run runs, so a fork's CI and ours test the same things."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import yaml
from tests.helpers import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "tests.yml"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def _workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def _job() -> dict[str, Any]:
    (job,) = _workflow()["jobs"].values()
    return job


def _ci_run_targets() -> list[str]:
    """The make targets .ci/run runs, in order."""
    return re.findall(r"^make ([\w-]+)", (ROOT / ".ci" / "run").read_text(), flags=re.M)


def _makefile_rule(target: str) -> str:
    makefile = (ROOT / "Makefile").read_text()
    found = re.search(rf"^{re.escape(target)}:.*?(?=\n\n|\Z)", makefile, flags=re.M | re.S)
    assert found is not None, f"the Makefile has no target {target}"
    return found.group(0)


def test_ci_runs_the_tests_then_lint_and_type_check_then_the_docs() -> None:
    assert _ci_run_targets() == ["test", "lint", "docs"]
    assert "mkdocs build --strict" in _makefile_rule("docs")


def test_the_workflow_runs_ci_run_and_nothing_in_its_place() -> None:
    """Its one command is `bash .ci/run`; `make install` before it only splits the log."""
    runs = [step["run"].strip() for step in _job()["steps"] if "run" in step]
    assert runs[-1] == "bash .ci/run"
    assert set(runs[:-1]) <= {"make install"}
    for target in _ci_run_targets():  # each target installs first, so installing early is a no-op
        assert _makefile_rule(target).split("\n")[0] == f"{target}: install", target


def test_the_workflow_runs_on_pushes_and_pull_requests_on_every_supported_python() -> None:
    workflow = _workflow()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    supported = [
        c.rsplit(" :: ", 1)[1]
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    matrix = _job()["strategy"]["matrix"]["python"]
    assert matrix == supported == ["3.11", "3.12"]
    assert project["requires-python"] == f">={matrix[0]}"


def test_the_workflow_installs_cpu_torch_offline_hub_and_caches_pip() -> None:
    job = _job()
    env = job["env"]
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["TORCH_INDEX"] == CPU_TORCH_INDEX
    install = _makefile_rule("$(BIN)/esmtune")
    torch_line = next(line for line in install.splitlines() if "torch==" in line)
    assert '"torch==$(TORCH_VERSION)"' in torch_line and "--index-url $(TORCH_INDEX)" in torch_line
    assert torch_line.index("torch") < install.index('-e ".[dev]"')  # torch before the package
    (cache,) = [s for s in job["steps"] if s.get("uses", "").startswith("actions/cache@")]
    assert cache["with"]["path"] == env["PIP_CACHE_DIR"]
    assert "hashFiles('pyproject.toml', 'Makefile')" in cache["with"]["key"]


def test_the_workflow_runs_where_ci_run_can_install_chromium() -> None:
    """.ci/run installs Chromium with apt: Debian's package is the browser, Ubuntu's a snap stub."""
    assert "apt-get install" in (ROOT / ".ci" / "run").read_text()
    assert _job()["container"] == "python:${{ matrix.python }}-bookworm"


def test_every_action_is_pinned_to_a_release() -> None:
    for step in _job()["steps"]:
        if "uses" in step:
            assert re.fullmatch(r"[\w-]+/[\w-]+@v\d+", step["uses"]), step["uses"]


def test_dependabot_updates_pip_and_the_actions_but_not_the_ruff_pin() -> None:
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    updates = {update["package-ecosystem"]: update for update in config["updates"]}
    assert set(updates) == {"pip", "github-actions"}
    ignored = {rule["dependency-name"] for rule in updates["pip"].get("ignore", [])}
    assert ignored == {"ruff"}  # pinned with .pre-commit-config.yaml (tests/test_tooling.py)
