"""Model loading: hub id, local folder, random weights, and a clear error when it cannot load."""

from __future__ import annotations

from pathlib import Path

import pytest

from esmtune.cli import main
from esmtune.config import ModelConfig
from esmtune.errors import ModelLoadError
from esmtune.model.backbone import ESM2_ARCHITECTURES, check_backbone_available, load_backbone

ROOT = Path(__file__).resolve().parents[1]


def test_missing_hub_model_fails_with_the_fix(capsys, learnable_data: Path) -> None:
    code = main(["train", f"data.path={learnable_data}", "model.name=facebook/esm2_t6_8M_UR50D"])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: cannot load model 'facebook/esm2_t6_8M_UR50D'")
    assert "model.pretrained=false" in error and "local folder" in error
    assert "Traceback" not in error


def test_shipped_train_config_stops_at_once_on_the_model(capsys) -> None:
    assert main(["train", "--config", str(ROOT / "configs/train.yaml")]) == 2
    assert "cannot load model 'facebook/esm2_t6_8M_UR50D'" in capsys.readouterr().err


def test_missing_local_folder_is_named() -> None:
    with pytest.raises(ModelLoadError, match="local folder /nonexistent/esm does not exist"):
        check_backbone_available(ModelConfig(name="/nonexistent/esm"))


def test_local_folder_loads_like_a_hub_checkpoint(tiny_model_dir: Path) -> None:
    model, tokenizer = load_backbone(ModelConfig(name=str(tiny_model_dir)))
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert tokenizer("MKV")["input_ids"] == [0, 20, 15, 7, 2]  # <cls> M K V <eos>


@pytest.mark.parametrize("name", ["facebook/esm2_t6_8M_UR50D", "facebook/esm2_t12_35M_UR50D"])
def test_random_weights_need_no_network(name: str) -> None:
    model, tokenizer = load_backbone(ModelConfig(name=name, pretrained=False))
    layers, hidden, heads = ESM2_ARCHITECTURES[name.split("/")[1]]
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (layers, hidden)
    assert model.config.num_attention_heads == heads and tokenizer.vocab_size == 33


def test_unknown_architecture_without_weights_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="needs a known ESM2 architecture"):
        load_backbone(ModelConfig(name="someone/protein-bert", pretrained=False))
