"""The documentation site says what the code does.

Every page is read as the site shows it (docs/_hooks/generated.py fills in help, the config
reference and README sections first): its ``esmtune`` commands parse with the real parser, its
Python blocks run against a trained run standing in for ``runs/demo``, and what it generates comes
from the code. ``make docs`` (``mkdocs build --strict``, in .ci/run) checks links and navigation.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shutil
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from tests.helpers import ROOT, markdown_commands

from esmtune import cli
from esmtune.cli import build_parser
from esmtune.config import describe_fields

DOCS = ROOT / "docs"
# A Python block, and the HTML comment that may stand on the line before it.
_PYTHON_BLOCK = re.compile(
    r"(?:^<!-- not run: (?P<reason>.+?) -->\n)?^```python\n(?P<code>.*?)^```", re.M | re.S
)


@cache
def _hook() -> ModuleType:
    """docs/_hooks/generated.py, the MkDocs hook, imported as a module."""
    spec = importlib.util.spec_from_file_location("docs_generated", DOCS / "_hooks/generated.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@cache
def site_pages() -> dict[str, str]:
    """Every page under docs/, by its path there, as the site shows it."""
    pages = sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)
    return {
        str(p.relative_to(DOCS)): _hook().expand(p.read_text(), str(p.relative_to(DOCS)))
        for p in pages
    }


def _nav_pages(entries: list) -> set[str]:
    found = set()
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        found |= _nav_pages(value) if isinstance(value, list) else {value}
    return found


def _parse_error(argv: list[str]) -> str | None:
    """What the real parser says is wrong with ``argv`` (None: nothing)."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            _, extra = build_parser().parse_known_args(argv)
    except SystemExit as exit:  # --help exits 0; a bad option or value exits 2
        return None if exit.code == 0 else errors.getvalue().strip().splitlines()[-1]
    late = [e for e in extra if "=" in e and not e.startswith("-")]  # overrides after options
    return None if late == extra else f"unrecognized arguments: {extra}"


# --- the pages ---------------------------------------------------------------------------------


def test_every_page_is_in_the_navigation_and_every_entry_is_a_page() -> None:
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    assert _nav_pages(nav) == set(site_pages())


def test_every_command_in_the_docs_parses() -> None:
    """Commands in bash blocks whole; commands in prose may leave out what they are not about."""
    checked = 0
    for page, text in site_pages().items():
        for argv in markdown_commands(text, inline=False):
            error = _parse_error(argv)
            assert error is None, f"{page}: `esmtune {' '.join(argv)}`: {error}"
            checked += 1
        for argv in markdown_commands(text, blocks=False):
            error = _parse_error(argv)
            fragment = error is not None and "the following arguments are required" in error
            assert error is None or fragment, f"{page}: `esmtune {' '.join(argv)}`: {error}"
            checked += 1
    assert checked >= 40


def test_every_command_has_a_page_with_its_help() -> None:
    """A new command of the table needs a page in docs/commands/ (and the nav) with its --help."""
    sources = {p.name: p.read_text() for p in (DOCS / "commands").glob("*.md")}
    for name in cli._COMMANDS:
        page = name.replace(" ", "-") + ".md"
        assert page in sources, f"command '{name}' has no page: add docs/commands/{page}"
        assert f"<!-- esmtune help {name} -->" in sources[page], page


def test_the_help_on_the_site_is_the_parsers() -> None:
    shown = site_pages()["commands/predict.md"]
    help = _hook().command_help(["predict"])
    assert help.startswith("usage: esmtune predict ") and help in shown
    assert "--long-sequences {truncate,centre,window}" in help


def test_the_configuration_reference_lists_every_key_with_its_help() -> None:
    page = site_pages()["reference/configuration.md"]
    for key, text in describe_fields():
        assert f"| `{key}` |" in page and f"| {_hook().table_text(text)} |" in page, key


def test_each_task_page_lists_the_keys_only_it_accepts() -> None:
    from esmtune.config import TASK_OPTIONS

    for task, options in TASK_OPTIONS.items():
        page = site_pages()[f"tasks/{task.value}.md"]
        assert f"`{options.metrics[0]}`" in page
        for key in options.options:
            assert f"| `{key}` |" in page, (task, key)


# --- the hook refuses what no longer exists -----------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "message"),
    [
        ("<!-- esmtune nonsense -->", "unknown directive 'nonsense'"),
        ("<!-- esmtune readme No Such Section -->", "README.md has no section 'No Such Section'"),
        ("<!-- esmtune help frobnicate -->", "`esmtune frobnicate --help` failed"),
        ("<!-- esmtune file configs/missing.yaml -->", "configs/missing.yaml does not exist"),
        ("<!-- esmtune task tennis -->", "no task named 'tennis'"),
        ("<!-- esmtune  config-->", "malformed directive"),
    ],
)
def test_a_directive_naming_nothing_stops_the_build(markdown: str, message: str) -> None:
    with pytest.raises(_hook().DocsError, match=re.escape(message)):
        _hook().expand(markdown, "page.md")


def test_readme_sections_come_with_their_links_pointed_at_site_pages() -> None:
    shown = site_pages()["security.md"]
    assert "Nothing esmtune reads is unpickled" in shown
    assert "](commands/train.md#batches-long-sequences-memory)" in shown
    assert "](#" not in shown  # no README anchor left dangling
    train = site_pages()["commands/train.md"]
    assert "](performance.md)" not in train and "](../performance.md)" in train
    api = site_pages()["reference/python-api.md"]  # README links into docs/, as GitHub reads them
    assert "](../encoder.md)" in api and "](docs/" not in api


def test_a_readme_link_with_no_page_here_stops_the_build(monkeypatch) -> None:
    hook = _hook()
    monkeypatch.setattr(hook, "README_LINKS", {})
    with pytest.raises(hook.DocsError, match="README link to #"):
        hook.expand("# Security\n\n<!-- esmtune readme Security and limits -->\n", "security.md")
    with pytest.raises(hook.DocsError, match=r"README link to docs/gone\.md: no such page"):
        hook._relink("[a guide](docs/gone.md)", "index.md")


# --- the Python examples ----------------------------------------------------------------------


def _python_blocks() -> list[tuple[str, str, str | None]]:
    """(page, code, reason it is not run or None) for every Python block of the site."""
    return [
        (page, found.group("code"), found.group("reason"))
        for page, text in site_pages().items()
        for found in _PYTHON_BLOCK.finditer(text)
    ]


def test_every_python_block_compiles_and_each_one_not_run_says_why() -> None:
    blocks = _python_blocks()
    assert len([b for b in blocks if b[2] is None]) >= 2
    for page, code, _ in blocks:
        compile(code, page, "exec")
    text = "\n".join(site_pages().values())
    markers = re.findall(r"^<!-- not run:", text, flags=re.M)
    assert len(markers) == len([b for b in blocks if b[2] is not None])  # each before a block


@pytest.mark.end_to_end
def test_the_python_examples_run_against_a_trained_run(
    lora_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Each page's blocks run in order in one namespace, in a folder holding runs/demo (a copy of
    lora_run), examples/ and configs/, as the project root does after `make demo`."""
    shutil.copytree(lora_run, tmp_path / "runs" / "demo")
    for shipped in ("examples", "configs"):
        (tmp_path / shipped).symlink_to(ROOT / shipped)
    monkeypatch.chdir(tmp_path)
    namespaces: dict[str, dict] = {}
    ran = 0
    for page, code, reason in _python_blocks():
        if reason is None:
            exec(compile(code, page, "exec"), namespaces.setdefault(page, {}))
            ran += 1
    assert ran >= 2
    assert "P1 " in capsys.readouterr().out  # the README's example, on the Python API page
