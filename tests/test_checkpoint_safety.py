"""Nothing esmtune reads can run code: checkpoints and model folders are never unpickled.

Each crafted file below writes a marker file when unpickled; the tests check that esmtune
refuses the folder with a message that says why and what to do, and that no marker appears.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from tests.helpers import tiny_overrides

from esmtune.cli import main
from esmtune.config import ModelConfig, load_config
from esmtune.errors import ModelLoadError
from esmtune.model.backbone import check_backbone_available, load_backbone

SRC = Path(__file__).resolve().parents[1] / "src" / "esmtune"


class _WritesMarker:
    """Unpickling this creates ``marker``: what a malicious pickle could do, made visible."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _crafted_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_WritesMarker(marker)))


def test_pickled_checkpoint_is_refused_unopened(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path, capsys
) -> None:
    """A shared run whose checkpoint is in the old pickle form: `--resume` must not unpickle it."""
    run = tmp_path / "received"
    config = load_config(None, tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "x"))
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config.to_yaml_dict(), sort_keys=False))
    checkpoint = run / "checkpoints" / "epoch-0001-step-00000015"
    checkpoint.mkdir(parents=True)
    save_file({}, str(checkpoint / "trainable.safetensors"))  # fits any model: nothing in it
    markers = []
    for name in ("optimizer.pt", "scheduler.pt", "rng-0.pt"):
        markers.append(tmp_path / f"unpickled-{name}")
        _crafted_pickle(checkpoint / name, markers[-1])
    state = {"epoch": 1, "batches_done": 0, "global_step": 15}
    (checkpoint / "state.json").write_text(json.dumps(state))

    assert main(["train", "--resume", str(run)]) == 2
    error = capsys.readouterr().err
    assert not [m for m in markers if m.exists()], "a checkpoint pickle was unpickled"
    assert str(checkpoint) in error and "pickle" in error
    assert "can run any code" in error
    assert f"move {run / 'checkpoints'} away" in error  # the way out
    assert "Traceback" not in error


def test_checkpoints_hold_only_safetensors_and_json(tmp_path: Path) -> None:
    """Optimizer, scheduler and RNG state come back identical from safetensors + JSON alone."""
    from esmtune.checkpoint.statefile import read_state, save_state

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.randn(), torch.rand(1)
    parameter = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = torch.optim.AdamW([parameter], lr=1e-3, betas=(0.8, 0.99))
    parameter.sum().backward()
    optimizer.step()
    state = {
        "python": random.getstate(),  # nested tuples, ints beyond 2**31
        "numpy": np.random.get_state(),  # a uint32 array among plain values
        "torch": torch.get_rng_state(),
        "optimizer": optimizer.state_dict(),  # keyed by integer parameter index
        "odd": {"inf": math.inf, "__dunder": -math.inf, 7: None, (1, 2): "tuple key"},
    }
    save_state(state, tmp_path / "state.safetensors")
    back = read_state(tmp_path / "state.safetensors")

    assert back["python"] == state["python"]
    random.setstate(back["python"])  # accepted as is
    name, keys, *rest = back["numpy"]
    assert name == "MT19937" and keys.dtype == np.uint32
    assert (keys == state["numpy"][1]).all() and tuple(rest) == state["numpy"][2:]
    np.random.set_state(back["numpy"])
    assert torch.equal(back["torch"], state["torch"])
    assert list(back["optimizer"]["state"]) == [0]
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.99)
    for key, tensor in state["optimizer"]["state"][0].items():
        assert torch.equal(back["optimizer"]["state"][0][key], tensor)
    restored = torch.optim.AdamW([parameter], lr=1e-3)
    restored.load_state_dict(back["optimizer"])
    assert restored.state[parameter]["exp_avg"].equal(optimizer.state[parameter]["exp_avg"])
    assert back["odd"] == state["odd"]


def test_no_source_file_unpickles() -> None:
    """No torch.load, pickle.load or allow_pickle anywhere esmtune reads files."""
    forbidden = re.compile(
        r"torch\.load\(|pickle\.loads?\(|weights_only\s*=\s*False|allow_pickle\s*=\s*True"
    )
    found = [
        f"{path.relative_to(SRC)}: {line.strip()}"
        for path in SRC.rglob("*.py")
        for line in path.read_text().splitlines()
        if forbidden.search(line)
    ]
    assert not found, found


@pytest.fixture
def pickled_model_dir(tiny_model_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The tiny model's config and tokenizer, with weights only as a crafted pytorch_model.bin."""
    folder = tmp_path / "bin_only"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    marker = tmp_path / "unpickled-model"
    _crafted_pickle(folder / "pytorch_model.bin", marker)
    return folder, marker


def test_model_folder_with_only_pickled_weights_is_refused(
    pickled_model_dir: tuple[Path, Path],
) -> None:
    folder, marker = pickled_model_dir
    for attempt in (check_backbone_available, load_backbone):
        with pytest.raises(ModelLoadError) as caught:
            attempt(ModelConfig(name=str(folder)))
        message = str(caught.value)
        assert str(folder) in message and "pytorch_model.bin" in message
        assert "unpickling a file can run any code" in message
        assert "save_pretrained" in message and "model.safetensors" in message  # the conversion
    assert not marker.exists()


def test_train_on_pickled_model_folder_fails_cleanly(
    pickled_model_dir: tuple[Path, Path], learnable_data: Path, tmp_path: Path, capsys
) -> None:
    folder, marker = pickled_model_dir
    assert main(["train", *tiny_overrides(folder, learnable_data, tmp_path, "bin")]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and "pytorch_model.bin" in error
    assert not marker.exists()
