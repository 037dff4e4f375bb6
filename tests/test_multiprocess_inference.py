"""embed, predict, evaluate and the frozen-mode cache on two CPU processes (gloo), as on a GPU node.

Each command's output under ``accelerate launch --num_processes 2`` must be what one process
writes, to the bit: the processes share the batches one process would form, so every sequence
is computed in the same batch. One process and two both run with one thread each, as separate
programs, so that nothing but the number of processes differs.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tests.helpers import ONE_MACHINE, launch_two, tiny_overrides, write_fasta

from esmtune.data.batching import EncodedDataset, encode, eval_loader
from esmtune.processes import Processes, share_by_cost

LAUNCH = launch_two(*ONE_MACHINE)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def _esmtune(processes: int, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``esmtune ARGS`` as its own program: one process, or two under accelerate launch."""
    start = [sys.executable] if processes == 1 else LAUNCH
    command = [*start, "-m", "esmtune", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _proteins(path: Path, count: int = 60, seed: int = 0) -> Path:
    """Proteins of 10 to 200 residues, some longer than the runs' 80-residue windows."""
    rng = random.Random(seed)
    records = [
        (f"p{i}", "".join(rng.choice(RESIDUES) for _ in range(rng.randint(10, 200))))
        for i in range(count)
    ]
    return write_fasta(path, records)


# --- sharing by tokens, in one process ---------------------------------------------------------


def test_shares_balance_tokens_and_keep_every_item_once() -> None:
    rng = random.Random(0)
    costs = [rng.choice([40, 300, 1024, 5000]) for _ in range(101)]
    for count in (1, 2, 3, 8):
        shares = share_by_cost(costs, count)
        assert sorted(i for share in shares for i in share) == list(range(len(costs)))
        assert all(share == sorted(share) for share in shares)
        totals = [sum(costs[i] for i in share) for share in shares]
        assert max(totals) - min(totals) <= max(costs)  # greedy, largest first
        assert share_by_cost(costs, count) == shares  # the same split in every process
    # A sequence count split would give one process all the long ones; tokens do not.
    assert share_by_cost([1000, 1000, 10, 10, 10, 10], 2) == [[0, 2, 4], [1, 3, 5]]


def _pretend(index: int, count: int) -> Processes:
    """Process ``index`` of ``count``, as accelerate's state describes it (no process group)."""
    state = SimpleNamespace(num_processes=count, process_index=index, device=torch.device("cpu"))
    return Processes(state)  # type: ignore[arg-type]


def test_each_process_loads_whole_batches_of_one_process(tokenizer) -> None:
    rng = random.Random(1)
    sequences = [
        "".join(rng.choice(RESIDUES) for _ in range(rng.randint(5, 300))) for _ in range(80)
    ]
    dataset = EncodedDataset(encode(tokenizer, sequences, 100, "window"))
    pad = tokenizer.pad_token_id
    alone = eval_loader(dataset, 600, pad)
    batches = [tuple(batch) for batch in alone.batch_sampler]
    shares = [
        [tuple(b) for b in eval_loader(dataset, 600, pad, processes=_pretend(i, 2)).batch_sampler]
        for i in range(2)
    ]
    assert sorted(shares[0] + shares[1]) == sorted(batches)  # the same batches, dealt out
    assert not set(shares[0]) & set(shares[1])
    sampler = alone.batch_sampler
    costs = [[sampler.cost(list(batch)) for batch in share] for share in shares]
    assert abs(sum(costs[0]) - sum(costs[1])) <= max(map(max, costs))
    assert all(costs[0]) and all(costs[1])
    # The order of one process is kept: longest first, so an out-of-memory shows at once.
    assert all(share == [b for b in batches if b in share] for share in shares)


def test_one_process_needs_no_accelerate() -> None:
    """Start-up: without accelerate launch, no process group and not even the import."""
    code = (
        "import sys; from esmtune.processes import Processes; p = Processes.current(); "
        "assert (p.count, p.index, p.is_main) == (1, 0, True); "
        "assert p.gather(lambda: 7) == [7] and p.on_main(lambda: 8) == 8; "
        "assert p.device_for(None) is None and p.device_for('cpu') == 'cpu'; "
        "assert 'accelerate' not in sys.modules and 'torch' not in sys.modules"
    )
    env = {key: value for key, value in ENV.items() if key != "WORLD_SIZE"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


# --- the commands on two processes ------------------------------------------------------------


@pytest.mark.multiprocess
def test_predict_on_two_processes_writes_what_one_process_writes(
    lora_run: Path, tmp_path: Path
) -> None:
    proteins = _proteins(tmp_path / "proteins.fasta")
    _esmtune(1, "predict", lora_run, proteins, "-o", tmp_path / "one.tsv")
    two = _esmtune(2, "predict", lora_run, proteins, "-o", tmp_path / "two.tsv")
    one_bytes = (tmp_path / "one.tsv").read_bytes()
    assert len(one_bytes.splitlines()) == 61  # a header and every protein
    assert (tmp_path / "two.tsv").read_bytes() == one_bytes
    assert two.stderr.count("60 prediction(s) written") == 1  # the main process alone writes
    assert two.stderr.count("longer than the model's 80 residues") == 1


@pytest.mark.multiprocess
@pytest.mark.parametrize(("pooling", "suffix"), [("mean", ".npz"), ("per-residue", ".h5")])
def test_embed_on_two_processes_writes_what_one_process_writes(
    tiny_model_dir: Path, tmp_path: Path, pooling: str, suffix: str
) -> None:
    from esmtune.data.embedding_files import read_embeddings

    proteins = _proteins(tmp_path / "proteins.fasta")
    written = {}
    for processes in (1, 2):
        out = tmp_path / f"{processes}{suffix}"
        result = _esmtune(
            processes, "embed", tiny_model_dir, proteins, "--pooling", pooling,
            "--max-length", "80", "--out", out,
        )  # fmt: skip
        assert result.stdout.count(f"embedding(s) of size 32 written to {out}") == 1
        written[processes] = read_embeddings(out)
    one, two = written[1].vectors, written[2].vectors
    assert list(two) == list(one) == [f"p{i}" for i in range(60)]  # input order
    for identifier in one:
        np.testing.assert_array_equal(two[identifier], one[identifier])
    files = sorted(path.name for path in tmp_path.iterdir())
    assert files == sorted(["proteins.fasta", f"1{suffix}", f"2{suffix}"])  # nothing else


@pytest.mark.multiprocess
def test_evaluate_on_two_processes_writes_the_same_report(lora_run: Path, tmp_path: Path) -> None:
    runs = {n: shutil.copytree(lora_run, tmp_path / f"run{n}") for n in (1, 2)}
    printed = {n: _esmtune(n, "evaluate", runs[n], "--resamples", "200").stdout for n in (1, 2)}
    one, two = (runs[n] / "eval" / "test" for n in (1, 2))
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert json.loads((two / "metrics.json").read_text()) == json.loads(
        (one / "metrics.json").read_text()
    )
    assert (two / "predictions.csv").read_bytes() == (one / "predictions.csv").read_bytes()
    assert printed[2] == printed[1].replace(str(runs[1]), str(runs[2]))  # reported once


@pytest.mark.multiprocess
def test_a_failure_in_one_process_ends_every_process(lora_run: Path, tmp_path: Path) -> None:
    """Process 1 fails in its share: process 0 says so and stops instead of waiting for it."""
    script = tmp_path / "failing.py"
    script.write_text(
        "import os, sys\n"
        "from esmtune import inference\n"
        "def fail(*args, **kwargs):\n"
        "    raise RuntimeError('simulated failure')\n"
        "if os.environ['RANK'] == '1':\n"
        "    inference.iterate_outputs = fail\n"
        "from esmtune.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proteins = _proteins(tmp_path / "proteins.fasta")
    command = [*LAUNCH, str(script), "predict", str(lora_run), str(proteins), "-o", "out.tsv"]
    result = subprocess.run(
        command, capture_output=True, text=True, env=ENV, timeout=180, cwd=tmp_path
    )
    assert result.returncode != 0
    assert "error: process 1 of 2 failed: RuntimeError: simulated failure" in result.stderr
    assert not (tmp_path / "out.tsv").exists()


# --- frozen training: the embedding cache ------------------------------------------------------


def _cache_content(root: Path) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Every cached vector by sequence key, and the number of shards of each cache entry."""
    vectors: dict[str, torch.Tensor] = {}
    shards: dict[str, int] = {}
    for entry in sorted(root.iterdir()):
        files = sorted(entry.glob("shard-*.safetensors"))
        shards[entry.name] = len(files)
        for shard in files:
            with safe_open(str(shard), framework="pt") as handle:
                names = handle.keys()  # (a safe_open handle is not iterable)
                vectors.update({key: handle.get_tensor(key) for key in names})
    return vectors, shards


@pytest.fixture(scope="module")
def frozen_caches(tiny_model_dir: Path, learnable_data: Path, tmp_path_factory) -> dict:
    """The cache filled by one process, and by two (with the run they trained)."""
    root = tmp_path_factory.mktemp("frozen")

    def train(processes: int, name: str, cache: str, epochs: int) -> str:
        overrides = tiny_overrides(tiny_model_dir, learnable_data, root, name)
        overrides += ["finetune.mode=frozen", f"finetune.cache_dir={root / cache}",
                      f"training.epochs={epochs}"]  # fmt: skip
        result = _esmtune(processes, "train", *overrides)
        return result.stdout + result.stderr

    return {
        "root": root,
        "train": train,
        "one": train(1, "one", "cache1", 1),  # (its cache is what matters; one epoch will do)
        "two": train(2, "two", "cache2", 2),
    }


@pytest.mark.multiprocess
def test_two_processes_compute_the_frozen_cache_together(frozen_caches: dict) -> None:
    root = frozen_caches["root"]
    for split, count in (("train", 120), ("validation", 36)):
        assert f"{split}: {count} embedding(s) computed, 0 read" in frozen_caches["one"]
        shared = re.search(
            rf"{split}: {count} embedding\(s\) computed \((\d+) \+ (\d+) on 2 processes\)",
            frozen_caches["two"],
        )
        assert shared, frozen_caches["two"][-2000:]
        assert int(shared[1]) > 0 and int(shared[2]) > 0
        assert int(shared[1]) + int(shared[2]) == count
    one, one_shards = _cache_content(root / "cache1")
    two, two_shards = _cache_content(root / "cache2")
    assert list(one_shards.values()) == [2]  # train and validation
    assert list(two_shards.values()) == [4]  # the same, from each process
    assert one_shards.keys() == two_shards.keys()  # the same cache entry
    assert sorted(two) == sorted(one) and len(one) == 156
    assert all(torch.equal(two[key], one[key]) for key in one)


@pytest.mark.multiprocess
def test_training_on_the_shared_cache_is_training_on_one_process_cache(
    frozen_caches: dict,
) -> None:
    """Two processes trained on the cache they computed, or on the one one process computed."""
    root = frozen_caches["root"]
    read = frozen_caches["train"](2, "two-from-one", "cache1", 2)
    assert "train: 0 embedding(s) computed, 120 read from the cache" in read
    computed = load_file(root / "two" / "model" / "weights.safetensors")
    from_one = load_file(root / "two-from-one" / "model" / "weights.safetensors")
    assert computed.keys() == from_one.keys()
    assert all(torch.equal(computed[key], from_one[key]) for key in computed)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["explain", "RUN", "--sequence", "MKT"], "explain does not share its work"),
        (["predict", "RUN", "--interactive"], "--interactive answers at one prompt"),
        (["predict", "RUN", "-"], "standard input reaches one process only"),
        (["embed", "MODEL", "-o", "out.npz"], "standard input reaches one process only"),
    ],
)
def test_what_cannot_be_shared_is_refused_under_a_launch(
    command: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Before any model loads: each process would read the prompt or write the same files."""
    import esmtune.cli

    monkeypatch.setattr(esmtune.cli, "_launched", lambda: True)
    assert esmtune.cli.main(command) != 0
    assert message in capsys.readouterr().err
