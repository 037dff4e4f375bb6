"""MkDocs hook: the parts of the site that the code or the README already say, filled in at build.

A page asks for one with a directive alone on its line, an HTML comment (so the raw file on
GitHub shows nothing in its place rather than a stale copy):

    <!-- esmtune help data check -->           `esmtune data check --help`, from the real parser
    <!-- esmtune config -->                    every config key, from the schema, by section
    <!-- esmtune task binary -->               a task's metrics, target column and own keys
    <!-- esmtune file configs/binary.yaml -->  a shipped file, as a code block
    <!-- esmtune readme Performance -->        a section of README.md (the measured figures live
                                               there), its links pointed at this site's pages

Anything unknown (a directive, a README section that is gone, a README link with no page here)
stops the build, so the site cannot drift quietly away from the code. ``expand`` is what the
tests call to see each page as the site shows it.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import re
import typing
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DIRECTIVE = re.compile(r"^<!-- esmtune (?P<name>[a-z-]+)(?: (?P<argument>.*?))? -->$", re.M)
HELP_COLUMNS = 100  # argparse wraps help to the terminal; the site shows it at a fixed width

# README anchors -> the page of this site that holds the same section (paths from docs/).
README_LINKS = {
    "#export": "commands/export.md",
    "#lean-inference": "commands/export.md#lean-inference",
    "#performance": "performance.md",
    "#gpu-benchmark": "performance.md#gpu-benchmark",
    "#security-and-limits": "security.md",
    "#batches-long-sequences-memory": "commands/train.md#batches-long-sequences-memory",
    "#experiment-trackers": "commands/train.md#experiment-trackers",
    "#embed-predict-and-evaluate-on-several-gpus": "commands/predict.md#on-several-gpus",
}

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```|~~~)")
_ITEM = re.compile(r"^(?:[-*+]|\d+\.) ")
_HEADING = re.compile(r"^(?P<hashes>#{1,6}) (?P<title>.+?)\s*$")


class DocsError(Exception):
    """A page asks for something the code or the README no longer has."""


# --- esmtune COMMAND --help ------------------------------------------------------------------


@contextlib.contextmanager
def _terminal_width(columns: int) -> Iterator[None]:
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def command_help(words: list[str]) -> str:
    """What ``esmtune WORDS --help`` prints (``[]``: the command list)."""
    from esmtune.cli import build_parser

    shown = io.StringIO()
    with _terminal_width(HELP_COLUMNS), contextlib.redirect_stdout(shown):
        try:
            build_parser().parse_args([*words, "--help"])
        except SystemExit as exit:
            if exit.code != 0:
                raise DocsError(f"`esmtune {' '.join(words)} --help` failed") from None
    return shown.getvalue().rstrip()


def _help_block(argument: str, page: str) -> str:
    words = argument.split()
    title = " ".join(["esmtune", *words, "--help"])
    return f'```text title="{title}"\n{command_help(words)}\n```'


# --- the configuration reference -------------------------------------------------------------


def table_text(text: str) -> str:
    """Schema text for a Markdown table cell: code spans kept, markup characters made literal."""
    parts = re.split(r"(`[^`]*`)", text)
    for i in range(0, len(parts), 2):  # outside code spans
        plain = parts[i].replace("\\", "\\\\").replace("<", "&lt;").replace(">", "&gt;")
        parts[i] = re.sub(r"([*_\[\]|])", r"\\\1", plain)
    return "".join(parts).replace("\n", " ")


def _type_name(annotation: Any) -> str:
    """A field's type as a person reads it: choices spelled out, ``X | None`` as X."""
    import types

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(names)
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return " \\| ".join(f"`{member.value}`" for member in annotation)
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"{{{_type_name(key)}: {_type_name(value)}}}"
    return {Path: "path", str: "text", int: "integer", float: "number", bool: "true/false"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _bounds(metadata: list[Any]) -> str:
    """A field's range from its constraints (``ge=8, le=1022`` -> ``8 ≤ x ≤ 1022``)."""
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "at least"}
    found = []
    for item in metadata:
        for name, sign in signs.items():
            value = getattr(item, name, None)
            if value is not None:
                found.append(f"{sign} {value}" if name != "min_length" else f"{sign} {value} long")
    return ", ".join(found)


def config_sections() -> list[tuple[str, type, list[tuple[str, str, str]]]]:
    """Each config section (``""`` for the top level) with its (key, type, description) rows.

    The keys and descriptions are :func:`esmtune.config.describe_fields`' (what
    ``esmtune train --help`` lists); types and ranges are read from the same fields.
    """
    from pydantic import BaseModel

    from esmtune.config import TrainConfig, describe_fields

    described = dict(describe_fields())
    sections: list[tuple[str, type, list[tuple[str, str, str]]]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        rows: list[tuple[str, str, str]] = []
        sections.append((prefix.rstrip("."), model, rows))
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")
                continue
            kind = _type_name(annotation)
            bounds = _bounds(field.metadata)
            rows.append((f"{prefix}{name}", f"{kind} ({bounds})" if bounds else kind, ""))
        rows[:] = [(key, kind, described[key]) for key, kind, _ in rows]

    walk(TrainConfig, "")
    listed = {key for _, _, rows in sections for key, _, _ in rows}
    if listed != set(described):
        raise DocsError(f"config keys differ from describe_fields(): {listed ^ set(described)}")
    return [section for section in sections if section[2]]


def _config_reference(argument: str, page: str) -> str:
    import inspect

    blocks = []
    for section, model, rows in config_sections():
        title = section or "top level"
        summary = (inspect.getdoc(model) or "").split("\n\n")[0].replace("\n", " ")
        table = ["| key | type | what it does [default] |", "|---|---|---|"]
        table += [f"| `{key}` | {kind} | {table_text(text)} |" for key, kind, text in rows]
        blocks.append(f"## {title}\n\n{summary}\n\n" + "\n".join(table))
    return "\n\n".join(blocks)


# --- a task's own settings -------------------------------------------------------------------


def _task_summary(argument: str, page: str) -> str:
    from esmtune.config import TASK_OPTIONS, Task, describe_fields

    try:
        task = Task(argument)
    except ValueError:
        raise DocsError(f"{page}: no task named {argument!r}") from None
    options = TASK_OPTIONS[task]
    metrics = ", ".join(f"`{name}`" for name in options.metrics[1:])
    columns = "one or more columns" if options.several_targets else "one column"
    lines = [
        f"- **Selects the best checkpoint by** `{options.metrics[0]}` (default of "
        f"`training.early_stopping.metric`); also possible: {metrics}.",
        f"- **Targets**: {columns}, `{options.target_column}` unless `data.target_columns` "
        "names others.",
    ]
    helps = dict(describe_fields())
    own = sorted(options.options)
    if own:
        lines += ["", "Settings for this task (other tasks refuse them):", ""]
        lines += ["| key | what it does [default] |", "|---|---|"]
        lines += [f"| `{key}` | {table_text(helps[key])} |" for key in own]
    return "\n".join(lines)


# --- shipped files ---------------------------------------------------------------------------


def _file_block(argument: str, page: str) -> str:
    path = ROOT / argument
    if not path.is_file():
        raise DocsError(f"{page}: {argument} does not exist")
    language = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".py": "python"}.get(
        path.suffix, "text"
    )
    return f'```{language} title="{argument}"\n{path.read_text().rstrip()}\n```'


# --- README sections -------------------------------------------------------------------------


def _outside_fences(lines: list[str]) -> Iterator[tuple[int, str]]:
    """(index, line) of the lines that are not inside a fenced code block."""
    fence = None
    for index, line in enumerate(lines):
        found = _FENCE.match(line)
        if fence is None and found:
            fence = found.group("fence")
        elif fence is not None and found and found.group("fence") == fence:
            fence = None
        elif fence is None:
            yield index, line


def readme_section(title: str) -> tuple[int, str]:
    """The level and the body (without its heading) of README.md's section called ``title``."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = level = None
    for index, line in _outside_fences(lines):
        heading = _HEADING.match(line)
        if heading is None:
            continue
        depth = len(heading.group("hashes"))
        if start is None and heading.group("title") == title:
            start, level = index + 1, depth
        elif start is not None and level is not None and depth <= level:
            return level, "\n".join(lines[start:index]).strip("\n")
    if start is None or level is None:
        raise DocsError(f"README.md has no section '{title}'")
    return level, "\n".join(lines[start:]).strip("\n")


def _list_indents(text: str) -> str:
    """Two-space list continuation (GitHub) as the four spaces Python-Markdown needs.

    Indentation outside code blocks is doubled; a fenced block moves right by as much as its
    fence did, so the code inside keeps its own indentation. A list item right after an indented
    paragraph gets a blank line before it, which GitHub does without.
    """
    out = []
    shift = None  # inside a fence: how far it moved
    fence = ""
    for line in text.splitlines():
        found = _FENCE.match(line)
        if shift is None:
            indent = len(line) - len(line.lstrip(" "))
            if _ITEM.match(line) and out and out[-1].startswith(" ") and out[-1].strip():
                out.append("")  # else the item would continue the indented paragraph above it
            out.append(" " * indent + line)
            if found:
                shift, fence = indent, found.group("fence")
        else:
            out.append(" " * shift + line if line.strip() else line)
            if found and found.group("fence") == fence:
                shift = None
    return "\n".join(out)


def _relink(text: str, page: str) -> str:
    """README links, pointed at this site's pages.

    An anchor goes to the page that holds its section (README_LINKS); a link into docs/, which
    GitHub follows, goes to the same page here.
    """

    def relative(target: str) -> str:
        path, _, fragment = target.partition("#")
        where = "" if path == page else posixpath.relpath(path, posixpath.dirname(page) or ".")
        return f"]({where}{'#' + fragment if fragment else ''})"

    def anchor(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in README_LINKS:
            raise DocsError(f"README link to {name} has no page here: add it to README_LINKS")
        return relative(README_LINKS[name])

    def docs_page(match: re.Match[str]) -> str:
        target = match.group(1)
        if not (ROOT / "docs" / target.partition("#")[0]).is_file():
            raise DocsError(f"README link to docs/{target}: no such page")
        return relative(target)

    text = re.sub(r"\]\((#[^)]*)\)", anchor, text)
    return re.sub(r"\]\(docs/([^)]*)\)", docs_page, text)


def _readme(argument: str, page: str, level: int) -> str:
    """A README section, its headings set below the page's heading at the directive."""
    section_level, body = readme_section(argument)
    shift = level - section_level

    def relevel(match: re.Match[str]) -> str:
        depth = min(6, len(match.group("hashes")) + shift)
        return f"{'#' * depth} {match.group('title')}"

    lines = body.splitlines()
    for index, line in list(_outside_fences(lines)):
        lines[index] = _HEADING.sub(relevel, line)
    return _relink(_list_indents("\n".join(lines)), page)


# --- the hook --------------------------------------------------------------------------------

_DIRECTIVES: dict[str, Callable[[str, str], str]] = {
    "help": _help_block,
    "config": _config_reference,
    "task": _task_summary,
    "file": _file_block,
}


def expand(markdown: str, page: str) -> str:
    """The page as the site shows it: every directive replaced by what it names.

    Args:
        markdown: The page's Markdown source.
        page: Its path under docs/ (links from included README text are made relative to it).

    Raises:
        DocsError: On an unknown directive, or one naming something that does not exist.
    """
    lines = markdown.splitlines()
    level = 1  # the heading level the text at a directive sits under
    for index, line in _outside_fences(lines):
        heading = _HEADING.match(line)
        if heading:
            level = len(heading.group("hashes"))
            continue
        found = DIRECTIVE.match(line)
        if found is None:
            if line.startswith("<!-- esmtune"):
                raise DocsError(f"{page}: malformed directive {line!r}")
            continue
        name, argument = found.group("name"), found.group("argument") or ""
        if name == "readme":
            lines[index] = _readme(argument, page, level)
        elif name in _DIRECTIVES:
            lines[index] = _DIRECTIVES[name](argument, page)
        else:
            known = ", ".join(["readme", *_DIRECTIVES])
            raise DocsError(f"{page}: unknown directive '{name}' (known: {known})")
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: expand the directives of each page before it is rendered."""
    return expand(markdown, page.file.src_uri)
