"""Training controls: a step budget, evaluation on a sample, and starting from an earlier run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.helpers import tiny_overrides

from esmtune.cli import main
from esmtune.config import load_config
from esmtune.data.fasta import SequenceRecord
from esmtune.errors import ModelLoadError
from esmtune.model.classifier import build_model
from esmtune.model.initial import initialise_from
from esmtune.rundir import WEIGHTS_FILE
from esmtune.training.loaders import evaluation_sample

# learnable_data: 120 training sequences in batches of 8, so 15 optimizer steps per epoch.
STEPS_PER_EPOCH = 15


def _steps_run(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _lr_at_the_end(run: Path) -> list[float]:
    newest = sorted((run / "checkpoints").iterdir())[-1]
    from esmtune.checkpoint.statefile import read_state

    return read_state(newest / "scheduler.safetensors")["_last_lr"]


def test_a_step_budget_ends_mid_epoch_with_the_schedule_spent(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path, capsys
) -> None:
    overrides = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "budget")
    overrides += ["training.epochs=1", "training.max_steps=20", "training.keep_checkpoints=9"]
    overrides += ["training.checkpoint_every_steps=10"]
    assert main(["train", *overrides]) == 0
    run = tmp_path / "budget"
    metrics = _steps_run(run)
    assert metrics["optimizer_steps"] == 20  # not 15 (one epoch): epochs is not used
    assert metrics["epochs_run"] == 2  # 15 steps, then 5 of the second epoch
    assert [h["step"] for h in metrics["history"]] == [15, 20]
    assert max(_lr_at_the_end(run)) == pytest.approx(0.0, abs=1e-12)  # linear decay to 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "all 20 optimizer steps ran (training.max_steps)" in capsys.readouterr().out

    # Stopped after step 10 and resumed: the same weights as the run that never stopped.
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    for checkpoint in (resumed / "checkpoints").iterdir():
        if checkpoint.name > "epoch-0000-step-00000010":
            shutil.rmtree(checkpoint)
    (resumed / "metrics.json").unlink()
    kept = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    assert kept == ["epoch-0000-step-00000010"]
    assert main(["train", "--resume", str(resumed)]) == 0
    expected, got = load_file(run / WEIGHTS_FILE), load_file(resumed / WEIGHTS_FILE)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert _steps_run(resumed)["optimizer_steps"] == 20


def test_the_evaluation_sample_is_seeded_and_never_empty() -> None:
    records = [SequenceRecord(f"P{i}", "MKV") for i in range(40)]
    sample = evaluation_sample(records, 0.25, seed=3, processes=1)
    assert len(sample) == 10
    assert sample == evaluation_sample(records, 0.25, seed=3, processes=1)  # every evaluation
    assert sample != evaluation_sample(records, 0.25, seed=4, processes=1)
    assert [r.id for r in sample] == sorted((r.id for r in sample), key=lambda x: int(x[1:]))
    assert len(evaluation_sample(records, 0.001, seed=3, processes=2)) == 2  # one per process
    assert evaluation_sample(records, 1.0, seed=3, processes=1) is records


def test_a_run_evaluates_on_its_sample(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path, capsys
) -> None:
    overrides = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "sampled")
    overrides += ["training.epochs=1", "training.eval_fraction=0.5"]
    assert main(["train", *overrides]) == 0
    assert "validation: evaluating on 18 of 36 sequences" in capsys.readouterr().out
    best = json.loads((tmp_path / "sampled/model/best_validation_metrics.json").read_text())
    assert best["n"] == 18  # the metrics are the sample's


def _model_like(run: Path, *overrides: str, outputs: int = 3):
    config = load_config(run / "config.yaml", list(overrides))
    torch.manual_seed(1)
    return build_model(config, outputs)[0]


def test_continued_training_starts_from_every_saved_weight(full_run: Path) -> None:
    model = _model_like(full_run)
    message = initialise_from(model, full_run, [])
    saved = load_file(full_run / WEIGHTS_FILE)
    assert message == f"initialised {len(saved)} tensor(s) from {full_run}"
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in saved.items())


def test_a_new_task_keeps_the_backbone_and_starts_a_new_head(full_run: Path) -> None:
    model = _model_like(full_run, outputs=1)  # binary: one logit
    fresh = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.")}
    message = initialise_from(model, full_run, ["head"])
    assert message.endswith("skipped (head)")
    saved, state = load_file(full_run / WEIGHTS_FILE), model.state_dict()
    backbone = [name for name in saved if name.startswith("backbone.")]
    assert backbone and all(torch.equal(state[n], saved[n]) for n in backbone)
    assert all(torch.equal(state[n], fresh[n]) for n in fresh)  # the head is the new one


def test_weights_that_do_not_fit_are_named_with_both_shapes(full_run: Path) -> None:
    model = _model_like(full_run, outputs=1)
    with pytest.raises(ModelLoadError) as caught:
        initialise_from(model, full_run, [])
    message = str(caught.value)
    assert "add model.init_skip=[head]" in message
    assert "head.layers.4.weight: (3, 32) in" in message and "(1, 32) here" in message
    with pytest.raises(ModelLoadError, match=r"\['haed'\] match no weight"):
        initialise_from(model, full_run, ["haed"])


def test_an_earlier_run_with_other_finetune_settings_is_refused(lora_run: Path) -> None:
    full = _model_like(lora_run, "finetune.mode=full")
    with pytest.raises(ModelLoadError, match="use the finetune settings of that run"):
        initialise_from(full, lora_run, [])


def test_train_from_an_earlier_run_for_a_new_task(
    full_run: Path, tiny_model_dir: Path, learnable_data: Path, tmp_path: Path, capsys
) -> None:
    binary = tmp_path / "binary"
    for split in ("train", "validation", "test"):
        (binary / split).mkdir(parents=True)
        for label in ("Acidic", "Basic"):
            shutil.copy(learnable_data / split / f"{label}.fasta", binary / split)
    overrides = tiny_overrides(tiny_model_dir, binary, tmp_path, "next")
    overrides += ["task=binary", "finetune.mode=full", "training.epochs=1"]
    overrides += [f"model.init_from={full_run}", "model.init_skip=[head]"]
    assert main(["train", *overrides]) == 0
    assert f"tensor(s) from {full_run}; 4 skipped (head)" in capsys.readouterr().out
    elsewhere = tiny_overrides(tiny_model_dir, binary, tmp_path, "never")
    elsewhere += ["task=binary", f"model.init_from={tmp_path / 'nowhere'}"]
    assert main(["train", *elsewhere]) == 2
    assert "is not a finished esmtune run" in capsys.readouterr().err


def test_a_frozen_run_from_a_full_run_saves_the_backbone_it_started_from(
    full_run: Path, tiny_model_dir: Path, learnable_data: Path, tmp_path: Path
) -> None:
    overrides = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "frozen")
    overrides += ["finetune.mode=frozen", "training.epochs=1"]
    overrides += [f"model.init_from={full_run}", "model.init_skip=[head]"]
    assert main(["train", *overrides]) == 0
    earlier = load_file(full_run / WEIGHTS_FILE)
    backbone = [name for name in earlier if name.startswith("backbone.")]
    saved = load_file(tmp_path / "frozen" / WEIGHTS_FILE)
    assert backbone and all(torch.equal(saved[n], earlier[n]) for n in backbone)
    # Predict, evaluate and export rebuild the model from the run: the full run's backbone,
    # not the base model's.
    from esmtune.model.run_model import load_run

    state = load_run(tmp_path / "frozen").model.state_dict()
    assert all(torch.equal(state[n], earlier[n]) for n in backbone)


def test_an_earlier_run_on_another_base_model_is_named(full_run: Path, lora_run: Path) -> None:
    from esmtune.model.initial import check_initial_run

    same = load_config(lora_run / "config.yaml").model
    assert check_initial_run(lora_run, same) is None
    other = same.model_copy(update={"name": "facebook/esm2_t6_8M_UR50D"})
    warning = check_initial_run(lora_run, other)
    assert warning is not None and "set model.name to the earlier run's" in warning
    assert f"was trained on {same.name}" in warning
