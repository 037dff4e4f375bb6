"""Data flows one way: config → data → model → train/evaluate → predict; cli imports everything."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "esmtune"

# Lower rank = further upstream. A module may import only modules of lower or equal rank.
# A package whose modules sit at different ranks lists them as "package.module"; its other
# modules (and the package itself, its __init__) take the package's rank.
RANKS = {
    "errors": 0,
    "storage": 0,
    "config": 1,
    "data": 2,
    "metrics": 2,
    "baseline": 3,
    "tasks": 3,
    "rundir": 3,
    "model": 4,
    "inference": 5,
    "embeddings": 5,
    "checkpoint": 5,
    "plots": 5,
    "train": 6,
    "training": 6,
    "evaluate": 6,
    "predict": 7,
    "serve": 8,
    "predict_options": 7,
    # Writing an export checks it with predict; loading one is below predict, which reads exports.
    "export": 8,
    "export.names": 1,
    "export.files": 5,
    "export.formats": 5,
    "export.hf": 5,
    "export.onnx": 5,
    "export.onnx_runtime": 5,
    "export.load": 5,
    "export.card": 8,
    "export.check": 8,
    "export.write": 8,
    # The old address of export loading (re-exports only), until cli.py imports esmtune.export.
    "model.exported": 5,
    "cli": 9,
    "__init__": 9,
    "__main__": 9,
}


def _rank(module: str) -> int:
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
