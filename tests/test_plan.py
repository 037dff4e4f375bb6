"""esmtune plan: memory estimates checked against real CPU training steps, and the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esmtune.cli import main
from esmtune.config import FinetuneMode
from esmtune.plan import GIB, ModelShape, Setting, estimate, model_shape

PROBE = Path(__file__).with_name("memory_probe.py")
SOURCE = Path(__file__).resolve().parents[1] / "src"

# Shapes small enough to train on a shared CPU in seconds, big enough (100-500 MiB) that the
# allocator's noise is small beside them: full, LoRA, the last layer and frozen; eager and sdpa
# attention; with and without gradient checkpointing.
SHAPES = [
    {"hidden": 64, "layers": 2, "heads": 4, "attention": "eager", "mode": "full",
     "checkpointing": False, "max_tokens": 4096, "length": 512},
    {"hidden": 128, "layers": 3, "heads": 8, "attention": "sdpa", "mode": "full",
     "checkpointing": False, "max_tokens": 4096, "length": 256},
    {"hidden": 320, "layers": 3, "heads": 20, "attention": "sdpa", "mode": "lora",
     "checkpointing": False, "max_tokens": 2048, "length": 512},
    {"hidden": 320, "layers": 3, "heads": 20, "attention": "eager", "mode": "full",
     "checkpointing": True, "max_tokens": 2048, "length": 512},
    {"hidden": 192, "layers": 6, "heads": 12, "attention": "sdpa", "mode": "lora",
     "checkpointing": True, "max_tokens": 2048, "length": 256},
    # bf16 under CPU autocast: only with sdpa, since CPU autocast keeps softmax in bf16 where
    # CUDA's computes it in fp32 (the eager attention term follows CUDA's rule).
    {"hidden": 320, "layers": 3, "heads": 20, "attention": "sdpa", "mode": "lora",
     "checkpointing": False, "max_tokens": 2048, "length": 512, "precision": "bf16"},
    # The last layer only, and a frozen backbone (nothing kept for backward).
    {"hidden": 320, "layers": 3, "heads": 20, "attention": "sdpa", "mode": "partial",
     "trained_layers": 1, "checkpointing": False, "max_tokens": 4096, "length": 512},
    {"hidden": 320, "layers": 3, "heads": 20, "attention": "eager", "mode": "frozen",
     "checkpointing": False, "max_tokens": 2048, "length": 512},
]  # fmt: skip


def _setting(shape: dict, **changes: object) -> Setting:
    values: dict = {
        "mode": FinetuneMode(shape["mode"]),
        "trained_layers": shape.get("trained_layers", 0),
        "lora_rank": 8,
        "lora_dropout": 0.05,
        "lora_targets": ("query", "key", "value", "dense"),
        "cached_embeddings": False,
        "checkpointing": shape["checkpointing"],
        "precision": shape.get("precision", "no"),
        "attention": shape["attention"],
        "max_tokens": shape["max_tokens"],
        "max_length": shape["length"] - 2,
        "head_hidden": (),  # the probe's head is one linear layer
        "gpus": 1,
        "strategy": "ddp",
    }
    return Setting(**{**values, **changes})


def _shape(shape: dict) -> ModelShape:
    return ModelShape(
        "probe", shape["layers"], shape["hidden"], shape["heads"], 4 * shape["hidden"]
    )


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_estimate_is_within_25_percent_of_measured_cpu_peak() -> None:
    environment = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",  # see memory_probe.py: RSS follows live tensors
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(SOURCE),
    }
    result = subprocess.run(
        [sys.executable, str(PROBE), json.dumps(SHAPES)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    lines = []
    for shape, peak in zip(SHAPES, measured, strict=True):
        planned = estimate(_shape(shape), _setting(shape)).measured_part
        lines.append(f"{shape}: planned {planned / 2**20:.0f} MiB, measured {peak / 2**20:.0f}")
        assert abs(planned - peak) <= 0.25 * peak, "\n".join(lines)
    print("\n".join(lines))


def test_checkpointing_lora_and_fsdp_each_save_memory() -> None:
    shape = model_shape("facebook/esm2_t33_650M_UR50D")
    full = {**SHAPES[0], "mode": "full", "max_tokens": 8192, "length": 1024}
    base = estimate(shape, _setting(full))
    assert estimate(shape, _setting(full, checkpointing=True)).total < base.total
    lora = estimate(shape, _setting(full, mode=FinetuneMode.LORA))
    assert lora.components["optimizer state"] < base.components["optimizer state"] / 50
    sharded = estimate(shape, _setting(full, strategy="fsdp", gpus=4))
    assert sharded.components["weights"] == pytest.approx(base.components["weights"] / 4, 1e-6)
    bf16 = estimate(shape, _setting(full, precision="bf16"))
    assert bf16.components["activations"] < base.components["activations"]
    assert bf16.components["weights"] == base.components["weights"]  # autocast keeps fp32


def test_published_sizes_have_their_parameter_counts() -> None:
    # The hub model cards' sizes: 8M, 35M, 150M, 650M, 3B, 15B.
    expected = {"t6_8M": 8e6, "t12_35M": 35e6, "t30_150M": 150e6, "t33_650M": 650e6,
                "t36_3B": 3e9, "t48_15B": 15e9}  # fmt: skip
    for name, count in expected.items():
        parameters = model_shape(f"facebook/esm2_{name}_UR50D").parameters
        assert abs(parameters - count) / count < 0.1, name


def test_a_local_folder_is_read_from_its_config_json(tmp_path: Path) -> None:
    values = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
              "intermediate_size": 256, "vocab_size": 33}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(values))
    assert model_shape(str(tmp_path)) == ModelShape(str(tmp_path), 2, 64, 4, 256, 33)


def test_plan_command_gives_a_verdict_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    big = ["model.name=facebook/esm2_t36_3B_UR50D", "training.mixed_precision=bf16"]
    assert main(["plan", *big, "training.max_tokens=8192", "--gpu-memory", "24"]) == 0
    text = capsys.readouterr().out
    assert "t36_3B, LoRA r=8, bf16, 8,192 tokens" in text
    assert "does not fit one 24 GiB GPU" in text
    assert "model.gradient_checkpointing=true" in text
    assert main(["plan", *big, "--gpus", "8", "--strategy", "fsdp", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["setting"]["strategy"] == "fsdp"
    assert report["total_bytes"] == sum(report["components_bytes"].values())
    assert report["fits"] is (report["total_bytes"] <= 80 * GIB)


def test_plan_command_does_not_import_torch() -> None:
    code = (
        "import sys; from esmtune.cli import main; "
        "main(['plan', '--json']); print('torch' in sys.modules, file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stderr.strip().endswith("False")


def test_progressive_unfreezing_is_planned_for_its_last_epoch() -> None:
    from esmtune.config import load_config
    from esmtune.plan import PlanOptions, setting_from_config

    keys = ["finetune.mode=partial", "finetune.unfreeze_last_layers=1"]
    progressive = [*keys, "finetune.unfreeze_every_epochs=2", "training.epochs=5"]
    options = PlanOptions()
    assert setting_from_config(load_config(None, keys), options).trained_layers == 1
    # Epochs 0-1: one layer, 2-3: two, 4: three.
    assert setting_from_config(load_config(None, progressive), options).trained_layers == 3


def test_when_no_single_change_fits_pairs_are_suggested() -> None:
    from esmtune.plan import plan

    shape = model_shape("facebook/esm2_t48_15B_UR50D")
    full = _setting({**SHAPES[0], "mode": "full", "max_tokens": 4096, "length": 1024})
    report = plan(shape, full, 80)
    assert not report["fits"]
    changes = [item["change"] for item in report["alternatives"]]
    assert changes and all(" and " in change for change in changes)
    assert len({frozenset(change.split(" and ")) for change in changes}) == len(changes)
    assert all(item["total_bytes"] <= 80 * GIB for item in report["alternatives"])
