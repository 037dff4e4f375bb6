"""Lean inference (issue 16): cold starts, serve start-up, the runtime's size, serving under load.

Run:  python benchmarks/lean_bench.py                  (about 10 min: trains a small run, exports
                                                        it, builds a runtime-only venv from PyPI)
      python benchmarks/lean_bench.py --run R --export E --skip-venv --json lean.json

"Before" is the code before the torch-free runtime (``git archive BEFORE src``, BEFORE below),
"after" this checkout's; both run with this
interpreter (the dev venv, everything installed), interleaved, each command repeated and the
median kept, so that the machine's load falls on both alike. The runtime venv holds only what
``pip install '.[serve]'`` installs (no torch): its size is its site-packages, and its cold start
is the "clean clone" figure. The before size is what that code's ``.[serve,export]`` install
pulled in, summed from the installed distributions' files in this venv (it had no torch-free
install).

The run is the demo's shape (``examples/esm2_small``, 4 layers, 160 wide, ``max_length`` 300, full
fine-tuning, no adapters) trained one epoch on the bundled SCL example, exported to ONNX int8.
Serving under load: ``--clients`` clients each send ``--requests`` requests, one in five long
(``--long`` residues, read in windows), the rest short; the same requests one at a time give the
sequential throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
SEQUENCE = "MKTAYIAKQRQISFVKSHFSRQ"
# The last commit before the torch-free runtime (the "before" column; any ref works).
BEFORE = "1466a20"
# What a prediction must not pull in, and what the table reports of a run's cold start.
HEAVY = ("torch", "transformers", "peft", "accelerate", "matplotlib", "tensorboard", "sklearn",
         "scipy", "pandas")  # fmt: skip


def sh(*args: str | Path, env: dict[str, str] | None = None, quiet: bool = True) -> str:
    done = subprocess.run([str(a) for a in args], env=env, capture_output=quiet, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{done.stderr}")
    return done.stdout or ""


def environment(source: Path) -> dict[str, str]:
    """This environment, importing esmtune from ``source`` (a ``src`` folder), offline."""
    return {**os.environ, "PYTHONPATH": str(source), "HF_HUB_OFFLINE": "1"}


def before_source(work: Path, ref: str) -> Path:
    """``ref``'s ``src`` folder, unpacked (no worktree: nothing is added to the repository)."""
    target = work / "before"
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"],
                             capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def make_run(work: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """The demo's model trained one epoch, and its ONNX int8 export."""
    esmtune = [sys.executable, "-m", "esmtune"]
    sh(*esmtune, "train", "--config", ROOT / "configs/demo.yaml", f"data.path={ROOT}/examples/scl3",
       f"model.name={ROOT}/examples/esm2_small", "training.epochs=1", f"output.dir={work}",
       "output.name=run", "data.measure_identity=false", env=env)  # fmt: skip
    sh(*esmtune, "export", work / "run", "--format", "onnx", "--quantize", "int8",
       "--out", work / "export", "--check-sequences", "8", env=env)  # fmt: skip
    return work / "run", work / "export"


def wall(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, capture_output=True, check=True)
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(python: str, export: Path, env: dict[str, str], workers: int = 1):
    """``esmtune serve`` in its own process group; (process, port, seconds until /health is 200)."""
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen(
        [python, "-m", "esmtune", "serve", str(export), "--port", str(port),
         "--workers", str(workers), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                if answer.status == 200:
                    return server, port, time.perf_counter() - started
        except OSError:
            pass
        if server.poll() is not None or time.perf_counter() - started > 120:
            raise RuntimeError("the server did not become healthy")
        time.sleep(0.02)


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)  # the server we started, and its workers
    server.wait(timeout=30)


def serve_seconds(python: str, export: Path, env: dict[str, str], workers: int) -> float:
    server, _, seconds = start_server(python, export, env, workers)
    stop_server(server)
    return seconds


def imported_by_run_predict(run: Path, env: dict[str, str]) -> list[str]:
    code = (
        "import sys; from esmtune.predict import Predictor; "
        f"Predictor.from_run({str(run)!r}).predict([{SEQUENCE!r}]); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    return sh(sys.executable, "-c", code, env=env).strip().split(",")


def median_pair(repeats: int, before, after) -> tuple[float, float]:
    """Medians of two measurements taken in turns (so that load changes hit both)."""
    firsts, seconds = [], []
    for _ in range(repeats):
        firsts.append(before())
        seconds.append(after())
    return statistics.median(firsts), statistics.median(seconds)


def installed_megabytes(requirements: list[str]) -> tuple[float, dict[str, float]]:
    """Installed size of ``requirements`` and everything they require, from this venv's files."""
    sizes: dict[str, float] = {}
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        name = requirement.name.lower().replace("_", "-")
        if name in sizes or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        files = [distribution.locate_file(f) for f in distribution.files or []]
        sizes[name] = sum(Path(f).stat().st_size for f in files if Path(f).is_file()) / 2**20
        for text in distribution.requires or []:
            required = Requirement(text)
            if not required.marker or required.marker.evaluate({"extra": ""}):
                pending.append(required)
    return sum(sizes.values()), sizes


def before_requirements(ref: str) -> list[str]:
    """What ``ref``'s ``pip install '.[serve,export]'`` (the API image's) asked for."""
    import tomllib

    pyproject = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:pyproject.toml"],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
    project = tomllib.loads(pyproject)["project"]
    extras = project["optional-dependencies"]
    return [*project["dependencies"], *extras["serve"], *extras["export"]]


def runtime_venv(work: Path) -> tuple[Path, float, dict[str, float]]:
    """A venv with ``pip install '.[serve]'`` (from PyPI) only; its python, site-packages MB."""
    copy = work / "project"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        copy.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__"))
    venv = work / "runtime-venv"
    sh(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    sh(python, "-m", "pip", "install", "--quiet", "--no-cache-dir", f"{copy}[serve]")
    (site,) = (venv / "lib").glob("python*/site-packages")
    sizes: dict[str, float] = {}
    for entry in site.iterdir():
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        sizes[entry.name] = sum(p.stat().st_size for p in files) / 2**20
    tools = sum(v for k, v in sizes.items() if k.split("-")[0] in ("pip", "setuptools"))
    return python, sum(sizes.values()) - tools, sizes


async def _load(port: int, requests: list[str], clients: int) -> tuple[float, list[float]]:
    """Send ``requests`` (one sequence each) with ``clients`` at once; (seconds, latencies)."""
    import httpx

    latencies = [0.0] * len(requests)
    queues = [list(range(start, len(requests), clients)) for start in range(clients)]
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600,
                                 limits=limits) as http:  # fmt: skip

        async def client(indices: list[int]) -> None:
            for index in indices:
                sent = time.perf_counter()
                body = {"sequences": [{"id": f"r{index}", "sequence": requests[index]}]}
                answer = await http.post("/predict", json=body)
                answer.raise_for_status()
                latencies[index] = time.perf_counter() - sent

        started = time.perf_counter()
        await asyncio.gather(*(client(q) for q in queues if q))
        return time.perf_counter() - started, latencies


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def serve_under_load(
    python: str, export: Path, env: dict[str, str], clients: int, per_client: int, long: int
) -> dict:
    rng = random.Random(0)
    residues = "ACDEFGHIKLMNPQRSTVWY"
    count = clients * per_client
    kinds = ["long" if i % 5 == 4 else "short" for i in range(count)]
    requests = ["".join(rng.choice(residues) for _ in range(long if kind == "long" else 60))
                for kind in kinds]  # fmt: skip
    server, port, _ = start_server(python, export, env)
    try:
        asyncio.run(_load(port, requests[:10], 2))  # warm-up
        sequential, _ = asyncio.run(_load(port, requests, 1))
        concurrent, latencies = asyncio.run(_load(port, requests, clients))
    finally:
        stop_server(server)
    result = {
        "requests": count,
        "clients": clients,
        "sequential_rps": count / sequential,
        "concurrent_rps": count / concurrent,
    }
    result["ratio"] = result["concurrent_rps"] / result["sequential_rps"]
    for kind in ("short", "long"):
        mine = [t for t, k in zip(latencies, kinds, strict=True) if k == kind]
        result[f"{kind}_p50_ms"] = 1000 * percentile(mine, 0.5)
        result[f"{kind}_p95_ms"] = 1000 * percentile(mine, 0.95)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: train the demo's shape)")
    parser.add_argument("--export", type=Path, help="its ONNX export (default: export the run)")
    parser.add_argument("--before", default=BEFORE, help=f"git ref of the before code [{BEFORE}]")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each timed command [5]")
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients [200]")
    parser.add_argument("--requests", type=int, default=5, help="requests per client [5]")
    parser.add_argument("--long", type=int, default=800, help="residues of a long request [800]")
    parser.add_argument("--skip-venv", action="store_true", help="no runtime venv (no PyPI)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lean_bench_"))
    before_env = environment(before_source(work, args.before))
    after_env = environment(ROOT / "src")
    if args.run is None or args.export is None:
        args.run, args.export = make_run(work, after_env)
    python = sys.executable
    predict_export = [python, "-m", "esmtune", "predict", str(args.export), "--sequence", SEQUENCE]
    predict_run = [python, "-m", "esmtune", "predict", str(args.run), "--sequence", SEQUENCE]
    rows: list[tuple[str, str, str, str]] = []
    figures: dict = {}

    def pair(name: str, key: str, target: str, before, after, unit: str = "s") -> None:
        old, new = median_pair(args.repeats, before, after)
        figures[key] = {"before": old, "after": new}
        rows.append((name, f"{old:.2f} {unit}", f"{new:.2f} {unit}", target))

    pair(
        "predict EXPORT --sequence (wall)",
        "predict_export",
        "< 1.5 s",
        lambda: wall(predict_export, before_env),
        lambda: wall(predict_export, after_env),
    )
    for workers in (1, 2):
        pair(f"serve EXPORT healthy, {workers} worker(s)", f"serve_{workers}", "< 2 s",
             lambda w=workers: serve_seconds(python, args.export, before_env, w),
             lambda w=workers: serve_seconds(python, args.export, after_env, w))  # fmt: skip
    pair(
        "predict RUN --sequence (torch, wall)",
        "predict_run",
        "",
        lambda: wall(predict_run, before_env),
        lambda: wall(predict_run, after_env),
    )
    old_modules = imported_by_run_predict(args.run, before_env)
    new_modules = imported_by_run_predict(args.run, after_env)
    figures["run_imports"] = {"before": old_modules, "after": new_modules}
    rows.append(("predict RUN imports (of HEAVY)", " ".join(old_modules),
                 " ".join(new_modules), "no peft, matplotlib, tensorboard"))  # fmt: skip

    before_mb, _ = installed_megabytes(before_requirements(args.before))
    figures["install_before_mb"] = before_mb
    if not args.skip_venv:
        lean_python, after_mb, sizes = runtime_venv(work)
        figures["install_after_mb"] = after_mb
        figures["install_after_largest"] = dict(sorted(sizes.items(), key=lambda x: -x[1])[:6])
        rows.append(("installed size (API image's install)", f"{before_mb:.0f} MB",
                     f"{after_mb:.0f} MB", "< 300 MB"))  # fmt: skip
        lean_env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        lean_env.pop("PYTHONPATH", None)
        lean_predict = [str(lean_python), *predict_export[1:]]
        times = [wall(lean_predict, lean_env) for _ in range(args.repeats)]
        serve = [serve_seconds(str(lean_python), args.export, lean_env, 1)
                 for _ in range(args.repeats)]  # fmt: skip
        figures["runtime_venv"] = {"predict": statistics.median(times),
                                   "serve": statistics.median(serve)}  # fmt: skip
        rows.append(("predict EXPORT, runtime venv (wall)", "-", f"{statistics.median(times):.2f} s",
                     "< 1.5 s"))  # fmt: skip
        rows.append(("serve EXPORT healthy, runtime venv", "-", f"{statistics.median(serve):.2f} s",
                     "< 2 s"))  # fmt: skip
    else:
        rows.append(("installed size (API image's install)", f"{before_mb:.0f} MB", "skipped", ""))

    load = serve_under_load(python, args.export, after_env, args.clients, args.requests, args.long)
    figures["load"] = load
    rows.append((f"serve load: {load['requests']} requests, {args.clients} clients vs 1",
                 "-", f"{load['concurrent_rps']:.1f} vs {load['sequential_rps']:.1f} req/s "
                 f"(x{load['ratio']:.2f})", "x >= 0.9"))  # fmt: skip
    for kind in ("short", "long"):
        rows.append(
            (
                f"  {kind} requests p50 / p95 under load",
                "-",
                f"{load[f'{kind}_p50_ms']:.0f} / {load[f'{kind}_p95_ms']:.0f} ms",
                "",
            )
        )

    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure'.ljust(width)} | {'before (' + args.before + ')':>20} | "
          f"{'after':>34} | target")  # fmt: skip
    for name, old, new, target in rows:
        print(f"{name.ljust(width)} | {old:>20} | {new:>34} | {target}")
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPU(s); work in {work}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
