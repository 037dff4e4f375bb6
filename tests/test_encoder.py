"""ProteinEncoder: the classifier's own encoder, reused inside a model of someone else's.

It trains inside a small user model with each way of tuning, its report counts exactly what
trains, it pools exactly as the classifier (and ``esmtune embed``) do for the same weights, and
a run directory loads as an encoder with the run's fine-tuned weights. The classifier it is
part of keeps the weight names runs have always saved.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.helpers import ATOL, make_learnable_dataset, random_protein, tiny_model
from torch import nn

from esmtune import ProteinEncoder
from esmtune.config import FinetuneMode, LongSequences, Pooling, load_config
from esmtune.data.batching import EncodedDataset, encode
from esmtune.data.fasta import read_fasta
from esmtune.embeddings import pooled_embeddings, residue_embeddings
from esmtune.errors import ConfigError, DataError
from esmtune.model.classifier import build_model
from esmtune.model.run_model import load_run, weights_to_save
from esmtune.rundir import WEIGHTS_FILE

HIDDEN, LAYERS = 32, 2
LAYER = 12_704  # parameters of one layer of the tiny ESM2 (hidden 32, 4 heads)
EMBEDDINGS = 33 * HIDDEN
# LoRA rank 4 on query, key, value and the attention output (32 -> 32) and the two MLP denses.
LORA_PER_LAYER = 4 * (4 * 2 * HIDDEN) + 4 * (HIDDEN + 4 * HIDDEN) + 4 * (4 * HIDDEN + HIDDEN)


class _Classifier(nn.Module):
    """What a user writes: the encoder, then a layer of their own on its embedding."""

    def __init__(self, encoder: ProteinEncoder, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.out = nn.Linear(encoder.embedding_dim, classes)

    def forward(self, sequences: list[str]) -> torch.Tensor:
        return self.out(self.encoder.encode(sequences))


def _examples(data: Path) -> tuple[list[str], torch.Tensor]:
    sequences, labels = [], []
    for label, path in enumerate(sorted((data / "train").glob("*.fasta"))):
        for record in read_fasta(path):
            sequences.append(record.sequence)
            labels.append(label)
    return sequences, torch.tensor(labels)


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], torch.Tensor]:
    """60 sequences of three composition-coded classes."""
    root = make_learnable_dataset(tmp_path_factory.mktemp("encoder_data"), {"train": 20})
    return _examples(root)


def _train(model: nn.Module, sequences: list[str], labels: torch.Tensor, epochs: int) -> list:
    """Mean loss per epoch of a few epochs of AdamW on batches of 10."""
    torch.manual_seed(0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    order = list(range(len(sequences)))
    losses = []
    model.train()
    for epoch in range(epochs):
        random.Random(epoch).shuffle(order)
        total = 0.0
        for start in range(0, len(order), 10):
            batch = order[start : start + 10]
            logits = model([sequences[i] for i in batch])
            loss = nn.functional.cross_entropy(logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(order))
    return losses


@pytest.mark.parametrize(
    ("settings", "trainable_layers", "layer_trainable"),
    [
        ({"finetune": "frozen"}, set(), 0),
        ({"finetune": "partial", "unfreeze_last_layers": 1}, {1}, LAYER),
        ({"finetune": "lora", "lora": {"r": 4}}, {0, 1}, LORA_PER_LAYER),
    ],
    ids=["frozen", "last-1", "lora"],
)
def test_encoder_trains_inside_a_user_model_and_reports_what_trains(
    tiny_model_dir: Path, examples, settings: dict, trainable_layers: set, layer_trainable: int
) -> None:
    torch.manual_seed(0)
    encoder = ProteinEncoder.from_pretrained(
        tiny_model_dir, pooling="attention", output_dim=16, **settings
    )
    report = encoder.trainable_report()
    lora = settings["finetune"] == "lora"
    layer_total = LAYER + (LORA_PER_LAYER if lora else 0)
    expected = {
        "embeddings": (0, EMBEDDINGS),
        **{
            f"layer {i}": (layer_trainable if i in trainable_layers else 0, layer_total)
            for i in range(LAYERS)
        },
        "final norm": (2 * HIDDEN if settings["finetune"] == "partial" else 0, 2 * HIDDEN),
        "contact head": (0, LAYERS * 4 + 1),
        "pooling": (HIDDEN + 1, HIDDEN + 1),
        "projection": (HIDDEN * 16 + 16, HIDDEN * 16 + 16),
    }
    assert {b.name: (b.trainable, b.total) for b in report.blocks} == expected
    assert report.total == sum(p.numel() for p in encoder.parameters())
    assert report.trainable == sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    assert "layer 1" in str(report)

    sequences, labels = examples
    model = _Classifier(encoder, 3)
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    losses = _train(model, sequences, labels, epochs=6)
    assert losses[-1] < 0.6 * losses[0], losses
    moved = {n for n, p in encoder.named_parameters() if not torch.equal(p, before[n])}
    trained = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert moved == trained  # every trainable parameter learnt, no frozen one moved


def test_unfreezing_the_embeddings_and_more_layers_later(tiny_model_dir: Path) -> None:
    encoder = ProteinEncoder.from_pretrained(tiny_model_dir, unfreeze_embeddings=True)
    report = encoder.trainable_report()
    assert report["embeddings"].trainable == EMBEDDINGS
    assert report["layer 1"].trainable == 0
    encoder.unfreeze(last_layers=1)
    assert encoder.trainable_report()["layer 1"].trainable == LAYER
    assert encoder.trainable_report()["layer 0"].trainable == 0
    encoder.unfreeze()
    assert encoder.trainable_report().trainable == encoder.trainable_report().total - 9
    encoder.freeze()
    assert encoder.trainable_report().trainable == 0  # mean pooling has nothing to learn


def test_settings_that_do_not_fit_are_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="partial trains nothing"):
        ProteinEncoder.from_pretrained(tiny_model_dir, finetune="partial")
    with pytest.raises(ConfigError, match="pooling"):
        ProteinEncoder.from_pretrained(tiny_model_dir, pooling="median")


def _twin_encoder(model, tokenizer, pooling: Pooling) -> ProteinEncoder:
    """A separate encoder holding a copy of the classifier's backbone and pooling weights."""
    encoder = ProteinEncoder(copy.deepcopy(model.backbone), tokenizer, pooling, max_length=20)
    encoder.pooler.load_state_dict(model.pooler.state_dict())
    return encoder.eval()


@pytest.mark.parametrize("pooling", list(Pooling))
def test_pooled_outputs_equal_the_classifiers_pooled_embeddings(
    tiny_model_dir: Path, tokenizer, pooling: Pooling
) -> None:
    model = tiny_model(tiny_model_dir, pooling)
    encoder = _twin_encoder(model, tokenizer, pooling)
    rng = random.Random(3)
    sequences = [random_protein(rng, n) for n in (57, 14, 93, 20, 5)]  # three need windows
    windows = encode(tokenizer, sequences, 20, LongSequences.WINDOW)
    dataset = EncodedDataset(windows)
    with torch.inference_mode():
        classifier = pooled_embeddings(model, dataset, tokenizer.pad_token_id, 10_000)
        batch = encoder.tokenize(sequences)
        assert "window_owner" in batch
        torch.testing.assert_close(encoder(**batch), classifier, atol=ATOL, rtol=0)
        torch.testing.assert_close(model.pooled(**batch), classifier, atol=ATOL, rtol=0)
        # encode() batches to a budget; 44 tokens is two windows a pass, so long ones stream.
        for budget in (10_000, 44):
            torch.testing.assert_close(
                encoder.encode(sequences, max_tokens=budget), classifier, atol=ATOL, rtol=0
            )
        per_residue = residue_embeddings(model, dataset, tokenizer.pad_token_id, 44)
        for ours, theirs in zip(encoder.encode_residues(sequences, 44), per_residue, strict=True):
            torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    # With gradients, the long ones are read in one pass (the streamed path keeps no graph).
    with_grad = encoder.unfreeze().encode(sequences, max_tokens=44)
    assert with_grad.requires_grad
    torch.testing.assert_close(with_grad.detach(), classifier, atol=ATOL, rtol=0)


def test_output_dim_projects_pooled_and_per_residue_outputs(tiny_model_dir: Path) -> None:
    encoder = ProteinEncoder.from_pretrained(tiny_model_dir, output_dim=24, max_length=20)
    sequences = ["MKTAYIAKQR", "M" + "KRKRRKSTGANQ" * 5, "mdedek"]  # 61 residues: windows
    assert encoder.embedding_dim == 24
    assert encoder.encode(sequences).shape == (3, 24)
    assert encoder(**encoder.tokenize(sequences)).shape == (3, 24)
    assert [tuple(r.shape) for r in encoder.encode_residues(sequences)] == [
        (10, 24), (61, 24), (6, 24),
    ]  # fmt: skip
    states, mask = encoder.residue_embeddings(**encoder.tokenize(sequences))
    assert states.shape == (3, 63, 24) and mask.sum(dim=1).tolist() == [10, 61, 6]
    assert encoder.encode([]).shape == (0, 24)
    with pytest.raises(DataError, match="invalid residue 'J'"):
        encoder.encode(["MKJ"])


def test_a_run_directory_loads_as_an_encoder_with_its_fine_tuned_weights(
    tiny_model_dir: Path, full_run: Path
) -> None:
    loaded = load_run(full_run)
    encoder = ProteinEncoder.from_pretrained(full_run)
    saved = load_file(full_run / WEIGHTS_FILE)
    state = encoder.state_dict()
    assert {name for name in saved if not name.startswith("head.")} <= set(state)
    for name, tensor in saved.items():
        if not name.startswith("head."):  # the run's classifier head is left out
            assert torch.equal(state[name], tensor), name
    fresh = ProteinEncoder.from_pretrained(tiny_model_dir)
    layer = "backbone.encoder.layer.1.attention.self.query.weight"
    assert not torch.equal(fresh.state_dict()[layer], encoder.state_dict()[layer])  # fine-tuned
    assert encoder.pooler.pooling is loaded.config.model.pooling
    assert encoder.max_length == loaded.config.data.max_length
    assert encoder.trainable_report().trainable == 0  # frozen unless asked
    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "MDEDEDDEEDSDE"]
    with torch.inference_mode():
        torch.testing.assert_close(
            encoder.encode(sequences), loaded.model.pooled(**encoder.tokenize(sequences))
        )


def test_a_lora_run_loads_merged_or_with_its_adapters(lora_run: Path) -> None:
    from peft import PeftModel
    from transformers import EsmModel

    loaded = load_run(lora_run)
    merged = ProteinEncoder.from_pretrained(lora_run)
    kept = ProteinEncoder.from_pretrained(lora_run, merge_lora=False, finetune="lora")
    assert isinstance(merged.backbone, EsmModel) and isinstance(kept.backbone, PeftModel)
    assert merged.max_length == kept.max_length == 80  # the run's windows
    layer = kept.trainable_report()["layer 0"]
    assert layer.trainable == sum(
        p.numel() for n, p in kept.backbone.named_parameters() if "lora_" in n and ".0." in n
    )  # the run's adapters train on; nothing else of the layer does
    assert 0 < layer.trainable < layer.total
    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "M" + "KRKRRKSTGANQ" * 20]  # 241 residues: windows
    with torch.inference_mode():
        expected = loaded.model.pooled(**merged.tokenize(sequences))
        torch.testing.assert_close(kept.eval().encode(sequences), expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(merged.encode(sequences), expected, atol=1e-4, rtol=1e-4)


def test_the_classifier_keeps_the_names_runs_save(tiny_model_dir: Path) -> None:
    """``backbone.…``, ``pooler.…``, ``head.…``: weights saved before the encoder still load."""
    config = load_config(
        None, [f"model.name={tiny_model_dir}", "model.pooling=attention", "finetune.mode=lora"]
    )
    torch.manual_seed(0)
    model, _ = build_model(config, 3)
    assert config.finetune.mode is FinetuneMode.LORA
    names = set(model.state_dict())
    assert {name.split(".")[0] for name in names} == {"backbone", "pooler", "head"}
    saved = weights_to_save(model, config)
    assert "pooler.scorer.weight" in saved and any("lora_A" in name for name in saved)
    torch.manual_seed(1)
    other, _ = build_model(config, 3)
    result = other.load_state_dict(saved, strict=False)
    assert not result.unexpected_keys
    assert all(name.startswith("backbone.") for name in result.missing_keys)  # frozen base
    for name, tensor in saved.items():
        assert torch.equal(other.state_dict()[name], tensor)
    partial = {name: t for name, t in saved.items() if name != "pooler.scorer.bias"}
    assert "pooler.scorer.bias" in other.load_state_dict(partial, strict=False).missing_keys
    other.load_state_dict(model.state_dict())  # strict: every name fits
