"""The project's tooling agrees with itself: one ruff version, lint and tests as documented."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_pre_commit_and_the_dev_extra_pin_the_same_ruff() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [r for r in project["optional-dependencies"]["dev"] if r.startswith("ruff")]
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"]
    (ruff,) = [repo for repo in hooks if repo["repo"].endswith("ruff-pre-commit")]
    assert pin == f"ruff=={ruff['rev'].removeprefix('v')}"


def test_make_lint_runs_the_type_checker_and_make_test_fast_skips_every_slow_group() -> None:
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "$(BIN)/mypy" in lint
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    markers = {line.split(":")[0] for line in options["ini_options"]["markers"]}
    fast = re.search(r'-m "not \((.*)\)"', makefile)
    assert fast is not None
    assert set(fast.group(1).split(" or ")) == markers
