"""Each fine-tuning mode trains exactly its parameters: counted, then checked by a step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from esmtune.config import load_config
from esmtune.model.classifier import build_model
from esmtune.model.tuning import ProgressiveUnfreezing, count_parameters, unfrozen_layers_at

HIDDEN, LAYERS, VOCAB = 32, 2, 33


def _layer_size(hidden: int) -> int:
    attention = 4 * (hidden * hidden + hidden) + 2 * hidden  # q, k, v, out + layer norm
    mlp = hidden * 4 * hidden + 4 * hidden + 4 * hidden * hidden + hidden + 2 * hidden
    return attention + mlp


def _head_size(hidden: int, head_hidden: int, classes: int) -> int:
    return hidden * head_hidden + head_hidden + head_hidden * classes + classes


def _build(model_dir: Path, *overrides: str):
    config = load_config(None, [f"model.name={model_dir}", "model.head_hidden=[16]", *overrides])
    torch.manual_seed(0)
    model, tokenizer = build_model(config, num_outputs=3)
    return model, tokenizer


def _saved_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters under the names a run saves them by (``backbone.…``, ``pooler.…``, ``head.…``).

    The module path has an ``encoder.`` level (the classifier is an encoder plus a head); the
    saved names, which runs and these assertions rely on, do not.
    """
    state = model.state_dict(keep_vars=True)
    return [(name, p) for name, p in state.items() if isinstance(p, torch.nn.Parameter)]


def _changed_after_step(model, tokenizer) -> set[str]:
    """Names of parameters an AdamW step moves (weight decay would move frozen ones too)."""
    before = {name: p.detach().clone() for name, p in _saved_parameters(model)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = tokenizer(["MKTAYIAKQR", "MLLVVAAGGD"], return_tensors="pt", padding=True)
    model.train()
    loss = torch.nn.functional.cross_entropy(
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]),
        torch.tensor([0, 2]),
    )
    loss.backward()
    optimizer.step()
    return {name for name, p in _saved_parameters(model) if not torch.equal(p, before[name])}


@pytest.mark.parametrize(
    ("overrides", "expected_backbone"),
    [
        (["finetune.mode=frozen"], 0),
        (
            ["finetune.mode=partial", "finetune.unfreeze_last_layers=1"],
            _layer_size(HIDDEN) + 2 * HIDDEN,
        ),
        (["finetune.mode=full"], None),
        (["finetune.mode=lora", "finetune.lora.r=4"], None),
    ],
    ids=["frozen", "partial-1", "full", "lora"],
)
def test_mode_trains_only_its_parameters(
    tiny_model_dir: Path, overrides, expected_backbone
) -> None:
    model, tokenizer = _build(tiny_model_dir, *overrides)
    head = _head_size(HIDDEN, 16, 3)
    trainable, total = count_parameters(model)
    trainable_names = {n for n, p in _saved_parameters(model) if p.requires_grad}
    mode = overrides[0].split("=")[1]
    if mode == "full":
        contact = sum(p.numel() for n, p in model.named_parameters() if "contact_head" in n)
        assert trainable == total - contact  # the unused contact head stays frozen
    elif mode == "lora":
        lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        # rank 4 on query, key, value, attention-output dense and both MLP denses, per layer
        per_layer = (
            4 * (4 * (HIDDEN + HIDDEN)) + 4 * (HIDDEN + 4 * HIDDEN) + 4 * (4 * HIDDEN + HIDDEN)
        )
        assert lora == LAYERS * per_layer
        assert trainable == head + lora
        assert all("lora_" in n or not n.startswith("backbone") for n in trainable_names)
    else:
        assert trainable == head + expected_backbone
    if mode == "partial":
        assert all(".layer.0." not in n for n in trainable_names)
        assert any(".layer.1." in n for n in trainable_names)

    changed = _changed_after_step(model, tokenizer)
    assert changed <= trainable_names
    assert any(n.startswith("head.") for n in changed)
    if mode != "frozen":
        assert any(n.startswith("backbone.") for n in changed)


def test_progressive_unfreezing_schedule() -> None:
    config = load_config(
        None,
        [
            "finetune.mode=partial",
            "finetune.unfreeze_last_layers=1",
            "finetune.unfreeze_every_epochs=2",
            "finetune.unfreeze_step=2",
        ],
    )
    assert [unfrozen_layers_at(config.finetune, epoch, 6) for epoch in range(7)] == [
        1, 1, 3, 3, 5, 5, 6,
    ]  # fmt: skip


def _trained_layers(model, require: bool) -> set[str]:
    """Backbone layers with a parameter that requires grad (or, ``require=False``, has a grad)."""
    return {
        name.split(".layer.")[1].split(".")[0]
        for name, p in model.backbone.named_parameters()
        if ".layer." in name and (p.requires_grad if require else p.grad is not None)
    }


@pytest.mark.parametrize("processes", [1, 2])
def test_progressive_unfreezing_adds_layers_each_epoch(
    tiny_model_dir: Path, processes: int
) -> None:
    """One process freezes through requires_grad; several keep it and mask the gradients."""
    overrides = [
        "finetune.mode=partial",
        "finetune.unfreeze_last_layers=0",
        "finetune.unfreeze_every_epochs=1",
    ]
    model, tokenizer = _build(tiny_model_dir, *overrides)
    config = load_config(None, [f"model.name={tiny_model_dir}", *overrides])
    unfreezing = ProgressiveUnfreezing(model.backbone, config.finetune, 3, processes)
    assert _trained_layers(model, require=True) == {"0", "1"}  # what the optimizer must hold
    batch = tokenizer(["MKTAYIAKQR", "MLLVVAAGGD"], return_tensors="pt", padding=True)
    for epoch, expected in ((0, set()), (1, {"1"}), (2, {"0", "1"})):
        note = unfreezing.for_epoch(epoch)
        assert note == f"epoch {epoch + 1}: the last {len(expected)} of 2 layers train"
        model.zero_grad(set_to_none=True)
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).sum().backward()
        unfreezing.mask_gradients()
        assert _trained_layers(model, require=False) == expected
        if processes == 1:
            assert _trained_layers(model, require=True) == expected
        else:  # DDP's parameter set stays as it was wrapped
            assert _trained_layers(model, require=True) == {"0", "1"}


def test_other_modes_have_nothing_to_unfreeze(tiny_model_dir: Path) -> None:
    model, _ = _build(tiny_model_dir, "finetune.mode=full")
    config = load_config(None, [f"model.name={tiny_model_dir}", "finetune.mode=full"])
    before = {name for name, p in model.named_parameters() if p.requires_grad}
    unfreezing = ProgressiveUnfreezing(model.backbone, config.finetune, 3, 2)
    assert unfreezing.for_epoch(0) is None
    assert {name for name, p in model.named_parameters() if p.requires_grad} == before


def test_progressive_run_unfreezes_as_epochs_pass(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from tests.helpers import tiny_overrides

    from esmtune.cli import main

    overrides = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "progressive")
    overrides += [
        "finetune.mode=partial",
        "finetune.unfreeze_every_epochs=1",
        "training.epochs=2",
        "training.keep_checkpoints=5",
    ]
    assert main(["train", *overrides]) == 0
    first, second = sorted((tmp_path / "progressive" / "checkpoints").iterdir())
    from transformers import EsmModel

    loaded = EsmModel.from_pretrained(tiny_model_dir, add_pooling_layer=False).state_dict()
    pretrained = {f"backbone.{name}": tensor for name, tensor in loaded.items()}
    for checkpoint, trained_layers in ((first, set()), (second, {"1"})):
        weights = load_file(checkpoint / "trainable.safetensors")
        moved = {
            name.split(".layer.")[1].split(".")[0]
            for name, tensor in weights.items()
            if ".layer." in name and not torch.equal(tensor, pretrained[name])
        }
        assert moved == trained_layers, checkpoint.name
