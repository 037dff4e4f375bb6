"""Several machines: the Slurm recipe's launch lines, and a two-machine rendezvous on one host.

A real cluster is out of reach here, so the recipe runs with stand-ins for ``scontrol``,
``srun`` and ``accelerate`` that record what each node would start, and two "machines" of one
process each meet on 127.0.0.1, as nodes meet at the job's first node, and must train to the
same weights as two processes on one machine.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.helpers import free_port, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_the_slurm_recipe_starts_one_accelerate_per_node(tmp_path: Path) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "launched.txt"
    bin_dir.mkdir()
    # A long node list (printed whole, as scontrol does): `| head -n 1` under pipefail died
    # of SIGPIPE now and then, in CI.
    _stub(bin_dir, "scontrol", 'printf "gpu-a\\ngpu-b\\n"; seq -f "gpu-%g" 1 100000')
    # srun: run the command once per node of the job, as Slurm would, with SLURM_NODEID set.
    _stub(bin_dir, "srun", 'while [[ $1 == --* ]]; do shift; done\n'
                           'for id in 0 1; do SLURM_NODEID=$id "$@"; done')  # fmt: skip
    _stub(bin_dir, "accelerate", f'echo "$*" >> {shlex.quote(str(log))}')
    env = {
        **os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[a-b]",
        "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "4", "ARGS": "training.epochs=3",
    }  # fmt: skip
    subprocess.run(["bash", str(SBATCH)], env=env, check=True, timeout=30)
    first, second = (shlex.split(line) for line in log.read_text().splitlines())
    for rank, argv in enumerate((first, second)):

        def option(flag: str, argv: list[str] = argv) -> str:
            return argv[argv.index(flag) + 1]

        assert argv[0] == "launch" and option("--machine_rank") == str(rank)
        assert option("--num_machines") == "2"
        assert option("--num_processes") == "8"  # 2 nodes x 4 GPUs
        assert option("--main_process_ip") == "gpu-a"  # the job's first node
        assert argv[-5:] == ["esmtune", "train", "--config", "configs/train.yaml",
                             "training.epochs=3"]  # fmt: skip


def _launch(machines: int, rank: int, port: int, overrides: list[str]) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", "2", "--num_machines", str(machines), "--machine_rank", str(rank),
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
        "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu",
        "-m", "esmtune", "train", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip


def _finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]


@pytest.mark.multiprocess
def test_two_machines_meet_and_train_as_two_processes_on_one(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path
) -> None:
    settings = ["training.epochs=2"]
    one = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "one-machine") + settings
    _finish(_launch(1, 0, free_port(), one))

    two = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "two-machines") + settings
    port = free_port()
    machines = [_launch(2, rank, port, two) for rank in (0, 1)]
    for process in machines:
        _finish(process)

    expected = load_file(tmp_path / "one-machine" / "model" / "weights.safetensors")
    got = load_file(tmp_path / "two-machines" / "model" / "weights.safetensors")
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.allclose(got[name], tensor, atol=1e-6), name
