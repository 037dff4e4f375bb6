"""The Dockerfiles, checked without Docker: what they copy, install and run exists in the project.

No engine builds the images here, so each promise a build or a `docker run` relies on is checked
against its source: COPY sources are in the build context, files named in commands are copied,
pip extras are pyproject's, the commands parse with esmtune's (and accelerate's) own parsers,
the base image's Python satisfies requires-python, and ports agree.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from esmtune.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "dockerfiles" / "train.Dockerfile"
API = ROOT / "dockerfiles" / "api.Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Base images whose tag does not say their Python: the version they ship (pytorch/pytorch is
# built with conda's Python 3.11). A new base image has to be added here, with its Python.
_IMAGE_PYTHON = {"pytorch/pytorch": "3.11"}
# The build argument naming the export directory copied into the API image.
_EXPORT_ARG = "EXPORT"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):  # Docker drops comments, even inside continuations
            continue
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        keyword, _, arguments = (pending + text).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{path.name} ends inside a continued line"
    return instructions


def _args(path: Path) -> dict[str, str]:
    """Build arguments and their defaults."""
    args = {}
    for keyword, arguments in _instructions(path):
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default
    return args


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def _all(path: Path, keyword: str) -> list[str]:
    return [arguments for k, arguments in _instructions(path) if k == keyword]


def _one(path: Path, keyword: str) -> str:
    (arguments,) = _all(path, keyword)
    return arguments


def _words(arguments: str) -> list[str]:
    """An instruction's arguments in exec (JSON) or shell form, as words."""
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def _command(path: Path) -> list[str]:
    """What `docker run IMAGE` runs: ENTRYPOINT followed by CMD."""
    entrypoint = _all(path, "ENTRYPOINT")
    command = _all(path, "CMD")
    return [
        *(_words(entrypoint[-1]) if entrypoint else []),
        *(_words(command[-1]) if command else []),
    ]


def _copies(path: Path) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context."""
    copies = []
    for arguments in _all(path, "COPY"):
        words = _words(arguments)
        if any(word.startswith("--from") for word in words):
            continue
        *sources, destination = [word for word in words if not word.startswith("--")]
        copies.append((sources, destination))
    return copies


def _ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(relative: str) -> bool:
    """Whether .dockerignore leaves ``relative`` (or a folder above it) out of the context."""
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in _ignore_patterns():
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if pattern.startswith("**/"):
            matched = any(fnmatch(p.rsplit("/", 1)[-1], pattern[3:]) for p in prefixes)
        else:
            matched = any(fnmatch(p, pattern) for p in prefixes)
        if matched:
            ignored = not negated  # the last matching line wins
    return ignored


@pytest.mark.parametrize("dockerfile", [TRAIN, API], ids=lambda p: p.name)
def test_copy_sources_are_in_the_build_context(dockerfile: Path) -> None:
    args = _args(dockerfile)
    for sources, _ in _copies(dockerfile):
        for source in sources:
            if f"${_EXPORT_ARG}" in source.replace("{", "").replace("}", ""):
                default = args[_EXPORT_ARG]
                assert default, f"ARG {_EXPORT_ARG} needs a default directory"
                assert not _ignored(default), f".dockerignore leaves out {default}"
                continue
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: not in the project"
            assert not _ignored(source), f"{dockerfile.name}: COPY {source}: in .dockerignore"


def test_dockerignore_leaves_out_local_state() -> None:
    for local in (".venv", ".git", "runs/demo", "src/esmtune/__pycache__", ".pytest_cache"):
        assert _ignored(local), local
    needed = ("pyproject.toml", "README.md", "LICENSE", "configs", "examples/scl3")
    for path in (*needed, "src/esmtune/cli.py", "src/esmtune/data/fasta.py"):  # not data/
        assert not _ignored(path), path


@pytest.mark.parametrize("dockerfile", [TRAIN, API], ids=lambda p: p.name)
def test_files_named_in_commands_are_copied_into_the_image(dockerfile: Path) -> None:
    copied = {source.rstrip("/") for sources, _ in _copies(dockerfile) for source in sources}
    words = _command(dockerfile) + [w for run in _all(dockerfile, "RUN") for w in shlex.split(run)]
    named = [word for word in words if re.fullmatch(r"(configs|examples|src)/[\w./-]+", word)]
    for name in named:
        assert (ROOT / name).is_file(), f"{dockerfile.name} runs with {name}, which does not exist"
        assert name.split("/")[0] in copied, f"{dockerfile.name}: {name} is not copied"
    if dockerfile is TRAIN:
        assert {"configs/accelerate.yaml", "configs/train.yaml"} <= set(named)


@pytest.mark.parametrize("dockerfile", [TRAIN, API], ids=lambda p: p.name)
def test_the_project_and_its_extras_are_installed(dockerfile: Path) -> None:
    installs = [shlex.split(run) for run in _all(dockerfile, "RUN") if "pip install" in run]
    project = [w for words in installs for w in words if w == "." or w.startswith(".[")]
    assert project, f"{dockerfile.name} does not pip install the project"
    extras = {e for w in project if w.startswith(".[") for e in w[2:-1].split(",")}
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"]), extras
    if dockerfile is API:
        assert extras == {"serve"}
    else:
        assert "train" in extras


def _requirements(extras: set[str]) -> set[str]:
    """The distributions ``pip install .[extras]`` asks for, extras of extras followed."""
    optional = PYPROJECT["project"]["optional-dependencies"]
    names, pending, seen = set(), [None, *extras], set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in PYPROJECT["project"]["dependencies"] if extra is None else optional[extra]:
            requirement = Requirement(text)
            if requirement.name == PYPROJECT["project"]["name"]:
                pending += sorted(requirement.extras)
            else:
                names.add(requirement.name.lower())
    return names


# The training stack by distribution name: what the API image must not install.
_TRAINING_STACK = {"torch", "transformers", "peft", "accelerate", "tensorboard", "matplotlib",
                   "scikit-learn", "scipy"}  # fmt: skip


def test_api_image_installs_the_runtime_without_the_training_stack() -> None:
    """An ONNX export needs numpy and onnxruntime: the image names no torch, no transformers."""
    for keyword, arguments in _instructions(API):
        for word in ("torch", "transformers"):
            assert word not in arguments.lower(), f"api.Dockerfile {keyword} names {word}"
    installs = [shlex.split(run) for run in _all(API, "RUN") if "pip install" in run]
    project = [w for words in installs for w in words if w.startswith(".[")]
    extras = {e for w in project for e in w[2:-1].split(",")}
    installed = _requirements(extras)
    assert {"onnxruntime", "numpy", "fastapi", "uvicorn"} <= installed
    assert not installed & _TRAINING_STACK, installed & _TRAINING_STACK
    # ... and the train image's extra does bring the stack.
    assert _requirements({"train"}) >= _TRAINING_STACK


def test_train_image_keeps_the_base_images_torch() -> None:
    (install,) = [run for run in _all(TRAIN, "RUN") if "pip install" in run]
    assert "torch.__version__" in install and "--constraint" in install
    assert "--index-url" not in install  # nothing else to fetch torch from
    # ... which works only if the base image's torch satisfies pyproject's requirement.
    image = _expand(_one(TRAIN, "FROM"), _args(TRAIN))
    assert image.startswith("pytorch/pytorch:"), image
    base_torch = re.match(r"\d+\.\d+(\.\d+)?", image.partition(":")[2]).group(0)
    train = PYPROJECT["project"]["optional-dependencies"]["train"]
    (required,) = [Requirement(r) for r in train if r.startswith("torch")]
    assert base_torch in required.specifier, f"{image} has torch {base_torch}, not {required}"


def _base_python(dockerfile: Path) -> str:
    image = _expand(_one(dockerfile, "FROM").split()[0], _args(dockerfile))
    name, _, tag = image.partition(":")
    if name in ("python", "docker.io/library/python"):
        return re.match(r"\d+\.\d+", tag).group(0)
    assert name in _IMAGE_PYTHON, f"which Python does {image} ship? add it to _IMAGE_PYTHON"
    return _IMAGE_PYTHON[name]


@pytest.mark.parametrize("dockerfile", [TRAIN, API], ids=lambda p: p.name)
def test_base_image_python_satisfies_requires_python(dockerfile: Path) -> None:
    python = _base_python(dockerfile)
    required = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert python in required, f"{dockerfile.name}: Python {python}, pyproject needs {required}"
    if dockerfile is API:
        assert _one(API, "FROM").startswith("python:3.12-slim")


def _parsed(argv: list[str]):
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"esmtune does not accept: esmtune {shlex.join(argv)}")


def test_train_command_parses() -> None:
    from accelerate.commands.launch import launch_command_parser

    command = _command(TRAIN)
    assert command[:2] == ["accelerate", "launch"]
    launch = launch_command_parser().parse_args(command[2:])
    assert launch.module and launch.training_script == "esmtune"
    assert (ROOT / launch.config_file).is_file()
    args = _parsed(launch.training_script_args)
    assert args.command == "train" and (ROOT / args.config).is_file()


def test_api_command_parses_and_ports_agree() -> None:
    command = _command(API)
    assert command[0] in PYPROJECT["project"]["scripts"]
    args = _parsed(command[1:])
    assert args.command == "serve"
    assert any(dest == str(args.run) for _, dest in _copies(API)), "serve's RUN is not copied"
    assert args.host == "0.0.0.0"
    (exposed,) = _words(_one(API, "EXPOSE"))
    assert int(exposed) == args.port
    health = re.search(
        r"https?://(?:127\.0\.0\.1|localhost):(\d+)(/\S*?)['\"]", _one(API, "HEALTHCHECK")
    )
    assert health, "HEALTHCHECK should ask the server over HTTP"
    assert int(health.group(1)) == args.port and health.group(2) == "/health"
    assert '@app.get("/health")' in (ROOT / "src" / "esmtune" / "serve.py").read_text()


# The dev extra installs hadolint into the virtual environment, which may not be on PATH.
HADOLINT = shutil.which("hadolint") or shutil.which(
    "hadolint", path=str(Path(sys.executable).parent)
)


@pytest.mark.skipif(
    HADOLINT is None, reason="hadolint not installed (the dev extra has it on x86_64 Linux)"
)
def test_hadolint() -> None:
    result = subprocess.run(
        [HADOLINT, str(TRAIN), str(API)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", [TRAIN, API], ids=lambda p: p.name)
def test_header_shows_how_to_build_and_run(dockerfile: Path) -> None:
    header = dockerfile.read_text().split("\nFROM", 1)[0]
    assert f"docker build -f dockerfiles/{dockerfile.name} " in header
    assert "docker run " in header
    if dockerfile is API:  # the export the image copies is made by the command shown
        (line,) = [line for line in header.splitlines() if "esmtune export" in line]
        args = _parsed(shlex.split(line.split("esmtune", 1)[1]))
        assert args.format == "onnx"
        assert args.out.as_posix().rstrip("/") == _args(API)[_EXPORT_ARG].rstrip("/")


def _copy_flags(path: Path) -> list[tuple[dict[str, str], str]]:
    """(--flags, destination) of every COPY from the build context."""
    found = []
    for arguments in _all(path, "COPY"):
        words = _words(arguments)
        flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
        if "from" not in flags:
            found.append((flags, [w for w in words if not w.startswith("--")][-1]))
    return found


def _chmod(mode: str, bits: int, is_dir: bool) -> int:
    """The permission bits ``COPY --chmod=MODE`` gives an entry that had ``bits``.

    Octal modes replace the bits; symbolic ones (``a+rX``, ``u=rwX,go=rX``) change them
    clause by clause as chmod(1) does, ``X`` meaning execute for folders and executables.
    """
    if re.fullmatch(r"[0-7]{3,4}", mode):
        return int(mode, 8)
    for clause in mode.split(","):
        match = re.fullmatch(r"([ugoa]*)((?:[-+=][rwxX]*)+)", clause)
        assert match, f"--chmod={mode}: cannot read '{clause}'"
        who = match.group(1) or "a"
        shifts = [{"u": 6, "g": 3, "o": 0}[w] for w in ("ugo" if "a" in who else who)]
        for op, perms in re.findall(r"([-+=])([rwxX]*)", match.group(2)):
            grant = (4 if "r" in perms else 0) | (2 if "w" in perms else 0)
            if "x" in perms or ("X" in perms and (is_dir or bits & 0o111)):
                grant |= 1
            for shift in shifts:
                if op == "+":
                    bits |= grant << shift
                elif op == "-":
                    bits &= ~(grant << shift)
                else:
                    bits = (bits & ~(7 << shift)) | (grant << shift)
    return bits


def test_chmod_reader() -> None:
    assert _chmod("a+rX", 0o600, is_dir=False) == 0o644
    assert _chmod("a+rX", 0o700, is_dir=True) == 0o755
    assert _chmod("u=rwX,go=rX", 0o600, is_dir=False) == 0o644
    assert _chmod("0644", 0o700, is_dir=True) == 0o644  # a folder nobody but root may enter
    assert _chmod("go-r", 0o644, is_dir=False) == 0o600


def test_api_image_model_is_readable_by_its_user() -> None:
    """The unprivileged USER of the API image can read every file and folder under /model.

    COPY keeps the build context's modes, so without --chmod (or --chown to that user) an export
    written under a strict umask (or by an esmtune that left weights 0600) would be unreadable.
    Checked for the worst build context: private files (0600) and folders (0700).
    """
    ((flags, _),) = [copy for copy in _copy_flags(API) if copy[1].rstrip("/") == "/model"]
    user = _one(API, "USER")
    owned = flags.get("chown", "").partition(":")[0] == user
    chmod = flags.get("chmod")
    assert chmod or owned, (
        "COPY to /model keeps the build context's modes: add --chmod=a+rX (or --chown to the "
        f"user {user}) so that the server can read the model"
    )
    for is_dir, private in ((False, 0o600), (True, 0o700)):
        bits = _chmod(chmod, private, is_dir) if chmod else private
        reader = (bits >> 6) if owned else bits  # the owner's bits, or everyone else's
        needed = 0o5 if is_dir else 0o4  # folders must be entered too
        kind = "folders" if is_dir else "files"
        assert reader & needed == needed, f"{kind} under /model: mode {bits:o} hides them"
