"""Loading an ESM2 backbone and its tokenizer: from the hub, a local folder, or built offline.

``pretrained: false`` builds the named architecture with random weights and the ESM2 vocabulary
without touching the network, so benchmarks and the demo run on machines with no hub access.
Weights are read from safetensors only: a folder or hub repository holding only pickled weights
(``pytorch_model.bin``) is refused without being opened, since unpickling can run code.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from transformers import AutoTokenizer, EsmConfig, EsmModel, EsmTokenizer, PreTrainedTokenizerBase

from esmtune.architectures import ESM2_ARCHITECTURES, ESM2_VOCAB, known_architecture
from esmtune.config import ModelConfig
from esmtune.errors import ModelLoadError

__all__ = [
    "ESM2_ARCHITECTURES",
    "ESM2_VOCAB",
    "build_esm2_config",
    "esm2_tokenizer",
    "load_backbone",
]


def build_esm2_config(layers: int, hidden: int, heads: int) -> EsmConfig:
    """An ESM2 configuration with the published settings (rotary positions, 1,026 positions)."""
    # transformers' EsmConfig keeps extra keys (its signature does not list them); ESM itself
    # always uses GELU, but the published checkpoints' config.json records it, and so does ours.
    return EsmConfig(  # type: ignore[call-arg]  # hidden_act: an extra key, see above
        vocab_size=len(ESM2_VOCAB),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=1026,
        position_embedding_type="rotary",
        layer_norm_eps=1e-5,
        emb_layer_norm_before=False,
        token_dropout=True,
        mask_token_id=ESM2_VOCAB.index("<mask>"),
        pad_token_id=ESM2_VOCAB.index("<pad>"),
    )


def esm2_tokenizer() -> EsmTokenizer:
    """The ESM2 tokenizer built from the known vocabulary, without the network."""
    with tempfile.TemporaryDirectory() as folder:
        vocab = Path(folder) / "vocab.txt"
        vocab.write_text("\n".join(ESM2_VOCAB) + "\n")
        return EsmTokenizer(str(vocab), model_max_length=1026)


def _offline_hint(name: str) -> str:
    return (
        f"cannot load model '{name}'. If it is a hub id, this machine may be offline or the hub "
        "cache may lack it: download it once where there is network "
        f"(`hf download {name}`), or point model.name at a local folder holding "
        "config.json, the weights and the tokenizer files, or set model.pretrained=false to "
        "train the same architecture from random weights"
    )


# Weight files that are pickles: loading them can run code, so they are never read.
_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def _convert_hint(source: str) -> str:
    target = f"{source.rstrip('/')}-safetensors"
    return (
        "esmtune loads weights from safetensors files only, because unpickling a file can run "
        "any code it contains. Convert it once, in an environment where you trust the file: "
        f'`python -c "from transformers import AutoModel, AutoTokenizer; '
        f"AutoModel.from_pretrained('{source}').save_pretrained('{target}'); "
        f"AutoTokenizer.from_pretrained('{source}').save_pretrained('{target}')\"` "
        f"(save_pretrained writes model.safetensors), then set model.name={target}"
    )


def _refuse_pickled_weights(folder: Path) -> None:
    """A local model folder whose weights exist only as pickles is refused, unopened.

    Raises:
        ModelLoadError: Naming the files and how to convert them to safetensors.
    """
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted({p.name for pattern in _PICKLE_WEIGHTS for p in folder.glob(pattern)})
    if pickles:
        raise ModelLoadError(
            f"model.name: {folder} holds its weights only as pickle files "
            f"({', '.join(pickles)}), not safetensors. {_convert_hint(str(folder))}"
        )


def check_backbone_available(config: ModelConfig) -> None:
    """Fail within seconds, before any data is read, when the backbone cannot be loaded.

    Raises:
        ModelLoadError: With the fix (local path, cached download, pretrained=false, or
            converting pickled weights to safetensors).
    """
    if not config.pretrained:
        return
    local = Path(config.name).expanduser()
    if config.name.startswith((".", "/", "~")) and not local.exists():
        raise ModelLoadError(f"model.name: local folder {local} does not exist")
    _refuse_pickled_weights(local)
    try:
        EsmConfig.from_pretrained(
            config.name,
            revision=config.revision,  # type: ignore[arg-type]  # None: the default branch
            local_files_only=True,
        )
        return
    except (OSError, ValueError) as error:
        cause = error
    if not local.exists() and _hub_reachable():
        try:
            EsmConfig.from_pretrained(
                config.name,
                revision=config.revision,  # type: ignore[arg-type]  # None: the default branch
            )
            return
        except (OSError, ValueError) as error:
            cause = error
    raise ModelLoadError(f"{_offline_hint(config.name)}\n  (cause: {cause})") from None


def _hub_reachable() -> bool:
    """Whether the hub's host resolves; without it, downloads would only retry for half a minute."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _load_pretrained(config: ModelConfig) -> tuple[EsmModel, PreTrainedTokenizerBase]:
    check_backbone_available(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.name, revision=config.revision)
        model = EsmModel.from_pretrained(
            config.name,
            # transformers annotates revision as str (default "main"), but passes None on to
            # huggingface_hub, where it means the repository's default branch, as documented.
            revision=config.revision,  # type: ignore[arg-type]
            add_pooling_layer=False,
            attn_implementation=config.attn_implementation,
            use_safetensors=True,  # never a pickle (pytorch_model.bin): it could run code
        )
    except (OSError, ValueError) as error:
        if "safetensors" in str(error):  # none downloaded, or the repository has only pickles
            raise ModelLoadError(
                f"{_offline_hint(config.name)}. If it has only pickled weights "
                f"(pytorch_model.bin): {_convert_hint(config.name)}\n  (cause: {error})"
            ) from None
        raise ModelLoadError(f"{_offline_hint(config.name)}\n  (cause: {error})") from None
    return model, tokenizer


def _build_random(config: ModelConfig) -> tuple[EsmModel, PreTrainedTokenizerBase]:
    """Same architecture, fresh weights: from a local config.json or the table of ESM2 shapes."""
    local = Path(config.name).expanduser()
    if (local / "config.json").is_file():
        esm_config = EsmConfig.from_pretrained(local)
        has_tokenizer = (local / "vocab.txt").is_file()
        tokenizer = AutoTokenizer.from_pretrained(local) if has_tokenizer else esm2_tokenizer()
    elif (shape := known_architecture(config.name)) is not None:
        esm_config, tokenizer = build_esm2_config(*shape), esm2_tokenizer()
    else:
        known = ", ".join(f"facebook/{name}" for name in ESM2_ARCHITECTURES)
        raise ModelLoadError(
            f"model.pretrained=false needs a known ESM2 architecture or a local folder with "
            f"config.json; '{config.name}' is neither. Known: {known}"
        )
    esm_config._attn_implementation = config.attn_implementation
    return EsmModel(esm_config, add_pooling_layer=False), tokenizer


def load_backbone(config: ModelConfig) -> tuple[EsmModel, PreTrainedTokenizerBase]:
    """Load (or, with ``pretrained: false``, build) the ESM2 encoder and its tokenizer.

    Args:
        config: The model section; ``name`` is a hub id or a local folder.

    Returns:
        The encoder without the pooling layer, and its tokenizer.

    Raises:
        ModelLoadError: With the fix (local path, cached download or pretrained=false).
    """
    if config.pretrained:
        return _load_pretrained(config)
    return _build_random(config)
