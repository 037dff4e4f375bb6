"""The big-model path: FSDP2 for real on two CPU processes (gloo), and the shipped configs.

Two processes train the tiny ESM2 fully sharded with ``configs/accelerate_fsdp.yaml``: the result
equals one process's (gradient accumulation 2 sees the same batches as two processes), a run
stopped mid-epoch resumes from its sharded checkpoint to the same weights and optimizer state,
and no file of a checkpoint is a pickle. DeepSpeed needs GPUs and the ``deepspeed`` package, and
esmtune refuses it; its config is checked as far as accelerate reads it without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tests.helpers import ROOT, launch_two, tiny_overrides

from esmtune.cli import main
from esmtune.errors import ConfigError

FSDP_CONFIG = ROOT / "configs" / "accelerate_fsdp.yaml"
DEEPSPEED_CONFIG = ROOT / "configs" / "accelerate_deepspeed_zero3.yaml"
# 120 sequences in batches of 10: 12 batches, an even number, so two processes and one process
# with gradient accumulation 2 take the same batches in the same optimizer steps. No dropout:
# each process draws its own masks.
SETTINGS = [
    "finetune.mode=full", "training.epochs=2", "training.batch_size=10",
    "model.head_dropout=0.0", "training.early_stopping.metric=loss",
    "training.checkpoint_every_steps=4", "training.keep_checkpoints=20",
]  # fmt: skip
STOP_AT = "epoch-0001-step-00000008"  # mid-epoch 2: step 8 of 12, two batches into the epoch
FINAL = "epoch-0002-step-00000012"


def _launch(*arguments: str) -> str:
    command = [*launch_two("--config_file", str(FSDP_CONFIG)), *arguments]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def _shards(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a sharded checkpoint, keyed by file and name."""
    found = {}
    for path in sorted([*checkpoint.glob("model/*"), *checkpoint.glob("optimizer/*")]):
        for name, tensor in load_file(path).items():
            found[f"{path.parent.name}/{path.name}/{name}"] = tensor
    return found


@pytest.mark.multiprocess
def test_fsdp_trains_as_one_process_and_resumes_from_sharded_checkpoints(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path
) -> None:
    sharded = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "fsdp") + SETTINGS
    output = _launch("-m", "esmtune", "train", *sharded)
    assert "2 process(es)" in output
    run = tmp_path / "fsdp"
    final = run / "checkpoints" / FINAL
    listed = json.loads((final / "files.json").read_text())
    assert listed["layout"] == "sharded" and listed["processes"] == 2
    # One safetensors file of slices per process, for the weights and for AdamW's moments.
    for folder in ("model", "optimizer"):
        files = sorted(p.name for p in (final / folder).iterdir())
        assert len(files) == 2, files
    with safe_open(str(next((final / "model").iterdir())), framework="pt") as handle:
        sliced = {name: handle.get_slice(name).get_shape() for name in handle.keys()}  # noqa: SIM118
    whole = json.loads((final / "shards.json").read_text())
    query = "backbone.encoder.layer.0.attention.self.query.weight"
    assert sliced[query][0] == whole[query][0] // 2  # half the rows: a slice, not a copy
    assert not [p for p in final.rglob("*") if p.suffix in {".pt", ".bin", ".pkl", ".metadata"}]

    # Same batches, one process accumulating two of them per step: the same weights.
    single = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "single") + SETTINGS
    assert main(["train", *single, "training.gradient_accumulation=2"]) == 0
    expected = load_file(tmp_path / "single" / "model" / "weights.safetensors")
    got = load_file(run / "model" / "weights.safetensors")  # gathered whole from the slices
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].shape == tensor.shape
        assert torch.allclose(got[name], tensor, atol=1e-5), name

    # Stopped two batches into epoch 2, resumed under FSDP: the same slices at the end.
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    for checkpoint in (resumed / "checkpoints").iterdir():
        if checkpoint.name > STOP_AT:
            shutil.rmtree(checkpoint)
    (resumed / "metrics.json").unlink()
    output = _launch("-m", "esmtune", "train", "--resume", str(resumed))
    assert f"resuming from {resumed / 'checkpoints' / STOP_AT}" in output
    expected_slices, got_slices = _shards(final), _shards(resumed / "checkpoints" / FINAL)
    assert got_slices.keys() == expected_slices.keys()
    for name, tensor in expected_slices.items():
        assert torch.equal(got_slices[name], tensor), f"{name} differs after resume"
    best = load_file(resumed / "model" / "weights.safetensors")
    assert all(torch.equal(best[k], got[k]) for k in got)


@pytest.mark.multiprocess
def test_fsdp_wraps_every_esm_layer_and_replaces_the_models_checkpointing(
    tiny_model_dir: Path,
) -> None:
    """LoRA under the shipped config: each EsmLayer sharded and recomputed by FSDP alone."""
    output = _launch(str(ROOT / "tests" / "fsdp_probe.py"), str(tiny_model_dir))
    report = json.loads(output.split("PROBE ", 1)[1].splitlines()[0])
    assert report["distributed_type"] == "DistributedType.FSDP"
    assert report["layers"] == 2 and report["checkpoint_wrapped"] and report["esm_layers_sharded"]
    assert report["sharded_on_dim_0"] and abs(report["local_share"] - 0.5) < 0.01
    # LoRA: frozen weights share shard units with adapters; only the adapters get gradients.
    assert report["lora"] > 0 and report["frozen"] > 0
    assert report["trained_with_grad"] and report["frozen_without_grad"]
    # model.gradient_checkpointing=true was switched off, and the log says why.
    assert report["hf_checkpointing"] is False
    assert "left to FSDP" in report["note"]


def _launch_environment(config: Path) -> dict[str, str]:
    """The variables ``accelerate launch --config_file config`` gives the training processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "train.py"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


def test_the_fsdp_config_asks_accelerate_for_what_the_readme_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import StateDictType

    environment = _launch_environment(FSDP_CONFIG)
    assert environment["ACCELERATE_USE_FSDP"] == "true"
    for name, value in environment.items():
        if name.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(name, value)
    plugin = FullyShardedDataParallelPlugin()  # what accelerate builds in each process
    assert plugin.fsdp_version == 2
    assert plugin.transformer_cls_names_to_wrap == ["EsmLayer"]
    assert plugin.reshard_after_forward is True  # full sharding
    assert plugin.activation_checkpointing is True
    assert plugin.state_dict_type is StateDictType.SHARDED_STATE_DICT


def test_the_deepspeed_config_is_zero3_with_values_accelerate_fills() -> None:
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    cluster = ClusterConfig.from_yaml_file(str(DEEPSPEED_CONFIG))
    assert cluster.distributed_type is DistributedType.DEEPSPEED
    settings = cluster.deepspeed_config
    plugin = DeepSpeedPlugin(
        hf_ds_config=str(ROOT / settings["deepspeed_config_file"]),
        zero3_init_flag=settings["zero3_init_flag"],
    )
    assert plugin.zero_stage == 3
    autos = ["gradient_accumulation_steps", "gradient_clipping", "train_batch_size"]
    assert all(plugin.is_auto(key) for key in autos)
    # What accelerate's prepare() fills from the launch and the loop; nothing "auto" may remain.
    plugin.deepspeed_config_process(
        must_match=True,
        gradient_accumulation_steps=2, gradient_clipping=1.0, train_batch_size=16,
        **{"zero_optimization.reduce_bucket_size": 1024,
           "zero_optimization.stage3_prefetch_bucket_size": 1024,
           "zero_optimization.stage3_param_persistence_threshold": 320,
           "bf16.enabled": True, "fp16.enabled": False},
    )  # fmt: skip
    assert "auto" not in json.dumps(plugin.deepspeed_config)


def test_training_refuses_deepspeed_and_fsdp1_with_the_config_to_use() -> None:
    from accelerate.utils import DistributedType

    from esmtune.training.sharding import check_sharding

    deepspeed = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, is_fsdp2=False)
    with pytest.raises(ConfigError, match=r"pickles.*accelerate_fsdp\.yaml"):
        check_sharding(deepspeed)  # type: ignore[arg-type]
    fsdp1 = SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=False)
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        check_sharding(fsdp1)  # type: ignore[arg-type]
    check_sharding(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True))  # type: ignore[arg-type]


def test_a_sharded_checkpoint_names_only_torch_dtypes(tmp_path: Path) -> None:
    """The state file is JSON a user could edit: a name that is not a dtype is refused, not run."""
    from esmtune.checkpoint.sharded import _dtype
    from esmtune.errors import RunDirError

    assert _dtype(tmp_path, "bfloat16") is torch.bfloat16
    for name in ("load", "Tensor", 3):
        with pytest.raises(RunDirError, match="not one: the checkpoint is damaged"):
            _dtype(tmp_path, name)
