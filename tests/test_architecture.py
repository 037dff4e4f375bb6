"""Data flows one way: config → data → model → train/evaluate → predict; cli imports everything."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "esmtune"

# Lower rank = further upstream. A module may import only modules of lower or equal rank.
# A package whose modules sit at different ranks lists them as "package.module"; its other
# modules (and the package itself, its __init__) take the package's rank.
RANKS: dict[str, float] = {
    "errors": 0,
    # Which optional parts are installed (the train extra), and what to install: torch-free.
    "extras": 0,
    "options": 0.5,
    "storage": 0,
    "config": 1,
    # Who computes what under accelerate launch, and who writes: below the data's loaders.
    "processes": 1,
    "data": 2,
    "metrics": 2,
    "calibration": 2,
    "report_page": 2,
    # Headline metrics of many bootstrap resamples at once (each task's resampled_scores).
    "weighted_metrics": 2,
    "plots": 2,
    "tasks": 3,
    "rundir": 3,
    # Checking a dataset applies its task's rules to what the readers found.
    "data.check": 3.5,
    # Splitting by homology reads and checks records as the data check does.
    "data.split": 3.5,
    "baseline": 4,
    # Bootstrap intervals of a task's metrics and the paired difference from the baseline.
    "intervals": 4,
    "model": 4,
    "inference": 5,
    "embeddings": 5,
    "checkpoint": 5,
    "train": 6,
    "training": 6,
    "evaluate": 6,
    "identity_bins": 5.5,
    # --resamples, --bootstrap-seed, --skip-baseline: torch-free, for the command line.
    "evaluate_options": 1,
    # Training from Python objects: the data check and training on records held in memory.
    "fitting": 6,
    "predict": 7,
    # A hyperparameter search: its space is checked against the config, torch-free; its trials
    # are training runs.
    "search_space": 1,
    "tune": 7,
    # predict --interactive's prompt loop: given a predictor, it imports none.
    "interactive": 7,
    # Residue scores and attention maps of a torch model, read as predict reads; predict offers
    # them (Predictor.explain), so explain sits just below it. Its options are torch-free.
    "explain": 6.5,
    "explain_options": 1,
    "serve": 8,
    "predict_options": 7,
    # Writing an export checks it with predict; loading one is below predict, which reads exports.
    "export": 8,
    "export.names": 1,
    "export.files": 5,
    "export.formats": 5,
    "export.hf": 5,
    "export.onnx": 5,
    # Tracing the graphs (torch), apart from the format so that loading an export needs no torch.
    "export.onnx_trace": 5,
    "export.onnx_runtime": 5,
    "export.load": 5,
    "export.card": 8,
    "export.check": 8,
    "export.write": 8,
    # The published ESM2 shapes, torch-free: loading offline and planning memory read them.
    "architectures": 0,
    # esmtune plan: memory from a config and an architecture, torch-free.
    "plan": 1.5,
    "cli": 9,
    "__init__": 9,
    "__main__": 9,
}


def _rank(module: str) -> float:
    """The module's own rank, else its package's: ``export.hf``, then ``export``."""
    parts = module.split(".")
    ranked = [".".join(parts[:end]) for end in range(len(parts), 0, -1)]
    return next(RANKS[name] for name in ranked if name in RANKS)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("esmtune."):
            found.add(node.module.removeprefix("esmtune."))
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
            found |= {n.removeprefix("esmtune.") for n in names if n.startswith("esmtune.")}
    return found


def test_every_module_has_a_rank() -> None:
    for path in PACKAGE.rglob("*.py"):
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        assert top in RANKS, f"add {top} to RANKS in {__file__}"


def test_every_rank_names_a_module() -> None:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        names |= {".".join(parts[:end]) for end in range(1, len(parts) + 1)}
    assert not set(RANKS) - names, f"stale or misspelt in RANKS: {sorted(set(RANKS) - names)}"


def test_no_module_imports_downstream() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for imported in _imports(path):
            if _rank(imported) > _rank(module):
                upward.append(f"{module} imports {imported}")
    assert not upward, upward


def test_only_the_cli_package_root_and_server_import_from_predict() -> None:
    users = {
        ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
        for p in PACKAGE.rglob("*.py")
        if any(name == "predict" for name in _imports(p))
    }
    assert users <= {"cli", "__init__", "serve", "export.check"}


_TASK_MEMBERS = {"MULTICLASS", "BINARY", "MULTILABEL", "REGRESSION"}


def _task_members_used(path: Path) -> list[int]:
    """Lines that name a particular task (``Task.BINARY`` ...) other than as a default value."""
    tree = ast.parse(path.read_text())
    defaults = {
        id(value)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for value in [*node.args.defaults, *node.args.kw_defaults]
        if value is not None
    }
    members = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "Task"
        and node.attr in _TASK_MEMBERS
        and id(node) not in defaults
    ]
    # The same branch spelled with the task's name: `task == "regression"`, {"binary": ...}.
    names = {member.lower() for member in _TASK_MEMBERS}
    compared = [
        side
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        for side in [node.left, *node.comparators]
    ]
    keys = [key for node in ast.walk(tree) if isinstance(node, ast.Dict) for key in node.keys]
    spelled = [
        node.lineno
        for node in [*compared, *keys]
        if isinstance(node, ast.Constant) and node.value in names
    ]
    return members + spelled


def test_only_the_task_modules_and_the_config_literal_name_a_task() -> None:
    """What differs per task lives in its module in esmtune/tasks/; nothing else branches on it.

    config.py holds each task's literal (the Task member and its TASK_OPTIONS row).
    """
    allowed = {PACKAGE / "config.py", *PACKAGE.joinpath("tasks").glob("*.py")}
    found = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in allowed
        for line in _task_members_used(path)
    ]
    assert not found, found
